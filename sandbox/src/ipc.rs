//! SysV IPC left behind by slot uids.
//!
//! Runs cannot create SysV objects (seccomp answers ENOSYS), but a machine that ran an
//! older build, or anything else as a slot uid, may still hold some: they would carry data
//! to the next user of that uid and stay charged to the slot's memory cgroup. At start-up
//! the sandbox removes every SysV object owned by a uid of its slot range.

use std::ops::Range;

/// Which table, and how to remove an entry of it.
#[derive(Clone, Copy)]
enum Table {
    Shm,
    Msg,
    Sem,
}

impl Table {
    fn path(self) -> &'static str {
        match self {
            Table::Shm => "/proc/sysvipc/shm",
            Table::Msg => "/proc/sysvipc/msg",
            Table::Sem => "/proc/sysvipc/sem",
        }
    }

    /// Column of the owner uid in the table (after `key id perms ...`).
    fn uid_column(self) -> usize {
        match self {
            Table::Shm => 7,
            Table::Msg => 7,
            Table::Sem => 4,
        }
    }

    fn remove(self, id: i32) -> bool {
        // SAFETY: IPC_RMID takes no buffer (NULL is allowed for shmctl/msgctl; semctl ignores
        // its fourth argument for IPC_RMID).
        let rc = unsafe {
            match self {
                Table::Shm => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                Table::Msg => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                Table::Sem => libc::semctl(id, 0, libc::IPC_RMID),
            }
        };
        rc == 0
    }
}

/// Parses one table: `(id, uid)` of every entry.
fn entries(text: &str, uid_column: usize) -> Vec<(i32, u32)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let id = cols.get(1)?.parse().ok()?;
            let uid = cols.get(uid_column)?.parse().ok()?;
            Some((id, uid))
        })
        .collect()
}

/// Removes every SysV object owned by a uid in `uids`. Returns how many were removed.
pub(crate) fn sweep(uids: Range<u32>) -> usize {
    let mut removed = 0;
    for table in [Table::Shm, Table::Msg, Table::Sem] {
        let Ok(text) = std::fs::read_to_string(table.path()) else {
            continue;
        };
        for (id, uid) in entries(&text, table.uid_column()) {
            if uids.contains(&uid) && table.remove(id) {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_parsed_by_column() {
        let shm = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid\n\
                   1986359915          5   600               1048576 20598 20605      0 61060 61060 61060 61060\n";
        assert_eq!(entries(shm, Table::Shm.uid_column()), vec![(5, 61060)]);
        let sem = "       key      semid perms      nsems   uid   gid  cuid  cgid\n\
                   1986359917          0   600          1 61060 61060 61060 61060\n";
        assert_eq!(entries(sem, Table::Sem.uid_column()), vec![(0, 61060)]);
    }
}
