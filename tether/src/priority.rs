//! The scheduling priority of one of the tether's threads: the reaper above the workload,
//! deferrable work below it.

/// Sets the calling thread's niceness (only root may lower it below 0).
pub fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: setpriority only reads its integer arguments. On Linux, PRIO_PROCESS with
    // `who` = 0 applies to the calling thread alone (each thread has its own nice value).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
