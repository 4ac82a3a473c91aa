//! Orphan reaping after a run: what a run leaves behind is killed and, with the sandbox as
//! the subreaper, reaped — whatever the leftover calls itself.

mod common;

use common::*;
use verdict_sandbox::Limits;

/// A daemon that renames itself (`PR_SET_NAME`) to bytes that are not UTF-8, prints its pid
/// and sleeps. Its `/proc/<pid>/stat` then holds those bytes in the command name field.
const NON_UTF8_DAEMON: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
int main(void) {
    if (fork() == 0) {
        setsid();
        if (fork() == 0) {
            prctl(PR_SET_NAME, "\xff\xfe(x) \xc3", 0, 0, 0);
            printf("%d\n", getpid());
            fflush(stdout);
            close(1); close(2);
            for (;;) sleep(1);
        }
        _exit(0);
    }
    wait(0);
    usleep(100000);
    return 0;
}
"#;

/// True while `/proc/<pid>` exists (alive, or a zombie nobody reaped).
fn exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_leftover_with_a_non_utf8_name_is_still_reaped() {
    // Only root drops to slot uids, which is what makes the sandbox the subreaper.
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if uid.ok() != Some(0) {
        eprintln!(
            "skipped: needs root (the sandbox reaps orphans only when it drops to slot uids)"
        );
        return;
    }
    let slot = SLOT_BASE + 90;
    let o = run_c(slot, "rename", NON_UTF8_DAEMON, &[], b"", Limits::default());
    assert_eq!(o.exit_code, Some(0), "{o:?}");
    let pid: i32 = stdout(&o).trim().parse().expect("daemon pid");
    // Reaped by the run's clean-up, or at the latest by the next run's in the same slot.
    assert_normal_run_still_works(slot);
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while exists(pid) && std::time::Instant::now() < give_up {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stat = std::fs::read(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        !exists(pid),
        "the renamed leftover was not reaped: {}",
        String::from_utf8_lossy(&stat)
    );
}
