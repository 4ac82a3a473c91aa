//! `verdict doctor`'s view of the sandbox: which isolation layers are really active on
//! this machine, one [`LayerReport`] per layer, in a fixed order.

use std::path::Path;

use serde::Serialize;

use crate::cgroup::DynMods;
use crate::disk::DiskMode;
use crate::Sandbox;

/// One isolation layer and whether it is really active here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerReport {
    pub name: &'static str,
    pub active: bool,
    pub detail: String,
}

impl Sandbox {
    /// Which layers are really active on this machine (for `verdict doctor`).
    pub fn report(&self) -> Vec<LayerReport> {
        let ids = self.slot_ids(0);
        let (mem, pids, cpuacct) = self.cgroups.as_ref().map_or((None, None, None), |c| {
            (c.memory.as_deref(), c.pids.as_deref(), c.cpuacct.as_deref())
        });
        vec![
            self.landlock_layer(),
            self.seccomp_layer(),
            self.disk_layer(),
            LayerReport {
                name: "no_new_privs",
                active: true,
                detail: "PR_SET_NO_NEW_PRIVS before exec".into(),
            },
            self.uid_layer(ids),
            memory_cgroup_layer(mem),
            pids_cgroup_layer(pids),
            self.cpuacct_cgroup_layer(cpuacct),
            self.dynmods_layer(),
            cgroup_v2_layer(),
            self.rlimits_layer(ids, mem, pids, cpuacct),
            self.cleanup_layer(ids, pids),
        ]
    }

    fn landlock_layer(&self) -> LayerReport {
        LayerReport {
            name: "landlock",
            active: self.fs.active(),
            detail: if self.fs.active() {
                let mut d = format!(
                    "ABI {} (filesystem{}{}); read-only: {}",
                    self.fs.kernel_version,
                    if self.fs.kernel_version >= 4 {
                        ", TCP bind/connect denied"
                    } else {
                        ""
                    },
                    if self.fs.kernel_version >= 6 {
                        ", signal + abstract-socket scoping"
                    } else {
                        ""
                    },
                    self.fs
                        .granted_paths()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                );
                if !self.fs.missing.is_empty() {
                    d.push_str(&format!(
                        "; missing (skipped): {}",
                        self.fs
                            .missing
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ));
                }
                d
            } else {
                "kernel has no Landlock".into()
            },
        }
    }

    fn seccomp_layer(&self) -> LayerReport {
        LayerReport {
            name: "seccomp",
            active: self.seccomp.is_some(),
            detail: match &self.seccomp {
                Some(p) => format!(
                    "{} BPF instructions; non-native ABIs killed; socket(AF_UNIX) {}",
                    p.len(),
                    if self.seccomp_allows_unix_socket {
                        "allowed (Landlock scopes it)"
                    } else {
                        "denied (socketpair allowed)"
                    }
                ),
                None => "no syscall table for this architecture".into(),
            },
        }
    }

    fn disk_layer(&self) -> LayerReport {
        LayerReport {
            name: "disk budget",
            active: matches!(self.disk, DiskMode::PerSlot(_)),
            detail: match &self.disk {
                DiskMode::PerSlot(b) => format!(
                    "each slot on its own loop-mounted ext4: {} MiB, {} inodes per run \
                     (ENOSPC beyond; the host disk holds at most slots x {} MiB)",
                    b.bytes >> 20,
                    b.inodes,
                    b.bytes >> 20
                ),
                DiskMode::Off(why) => format!("off ({why})"),
            },
        }
    }

    fn uid_layer(&self, ids: Option<(u32, u32)>) -> LayerReport {
        LayerReport {
            name: "uid drop",
            active: ids.is_some(),
            detail: match ids {
                Some((uid, _)) => {
                    format!("slot N runs as uid/gid {uid}+N, no supplementary groups")
                }
                None if !self.is_root => "not root: programs run as the worker's uid".into(),
                None => "disabled by configuration".into(),
            },
        }
    }

    fn cpuacct_cgroup_layer(&self, cpuacct: Option<&Path>) -> LayerReport {
        LayerReport {
            name: "cgroup cpuacct",
            active: cpuacct.is_some(),
            detail: match cpuacct {
                Some(p) => format!(
                    "v1 {} (CPU time of all the run's processes, sampled every <= 20 ms; \
                     killed at the limit)",
                    p.display()
                ),
                None if self.proc_stat => "unavailable: CPU time of the main process (and \
                                           children it reaped) from /proc/<pid>/stat, \
                                           killed at the limit"
                    .into(),
                None => {
                    "unavailable, no /proc: CPU limited by RLIMIT_CPU only (whole seconds)".into()
                }
            },
        }
    }

    fn dynmods_layer(&self) -> LayerReport {
        LayerReport {
            name: "cgroup favordynmods",
            active: matches!(
                self.dynmods,
                Some(DynMods::AlreadyOn(_) | DynMods::TurnedOn(_))
            ),
            detail: match &self.dynmods {
                Some(DynMods::AlreadyOn(p)) => {
                    format!(
                        "already on ({}): cgroup joins do not wait for RCU",
                        p.display()
                    )
                }
                Some(DynMods::TurnedOn(p)) => format!(
                    "turned on by remounting {}: cgroup joins do not wait for RCU",
                    p.display()
                ),
                Some(DynMods::Off(why)) => {
                    format!("off ({why}): a run after idle pays 10-15 ms to join its cgroups")
                }
                None => "not applicable (no cgroups or not root)".into(),
            },
        }
    }

    fn rlimits_layer(
        &self,
        ids: Option<(u32, u32)>,
        mem: Option<&Path>,
        pids: Option<&Path>,
        cpuacct: Option<&Path>,
    ) -> LayerReport {
        LayerReport {
            name: "rlimits",
            active: true,
            detail: format!(
                "CPU ({}), {}FSIZE, NOFILE, STACK, CORE=0{}",
                if cpuacct.is_some() || self.proc_stat {
                    "backstop: limit rounded up to seconds + 1 s, +1 s hard"
                } else {
                    "limit rounded up to seconds, +1 s hard"
                },
                if mem.is_some() { "" } else { "DATA, " },
                if ids.is_some() {
                    ", NPROC per slot uid"
                } else if pids.is_some() {
                    " (NPROC not set: shared uid, the pids cgroup limits processes)"
                } else if self.is_root {
                    " (NPROC not set: root is exempt; no pids cgroup, processes unlimited)"
                } else {
                    ", NPROC = the run's limit + the uid's tasks outside runs + other runs' \
                     limits (shared uid, counted from /proc before each spawn)"
                }
            ),
        }
    }

    fn cleanup_layer(&self, ids: Option<(u32, u32)>, pids: Option<&Path>) -> LayerReport {
        LayerReport {
            name: "cleanup",
            active: ids.is_some() || pids.is_some(),
            detail: if ids.is_some() {
                format!(
                    "kill(-1) as the slot uid after each run; orphans reaped: {}",
                    self.reaper
                )
            } else if pids.is_some() {
                "kill every pid in the slot's pids cgroup after each run".into()
            } else {
                "process group only: setsid daemons can escape".into()
            },
        }
    }
}

fn memory_cgroup_layer(mem: Option<&Path>) -> LayerReport {
    LayerReport {
        name: "cgroup memory",
        active: mem.is_some(),
        detail: match mem {
            Some(p) => format!("v1 {} (OOM kills counted: exact MLE)", p.display()),
            None => "unavailable: memory limited by RLIMIT_DATA, MLE inferred".into(),
        },
    }
}

fn pids_cgroup_layer(pids: Option<&Path>) -> LayerReport {
    LayerReport {
        name: "cgroup pids",
        active: pids.is_some(),
        detail: match pids {
            Some(p) => format!("v1 {}", p.display()),
            None => "unavailable".into(),
        },
    }
}

fn cgroup_v2_layer() -> LayerReport {
    LayerReport {
        name: "cgroup v2",
        active: false,
        detail: if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            "mounted but not used by this build".into()
        } else {
            "not mounted at /sys/fs/cgroup".into()
        },
    }
}
