//! End-to-end scenarios. Each module is one thing a user does; each test boots real container
//! VMs under QEMU (TCG) from the bootstrap ISO and checks what the user would see.

mod attach_to_running;
mod backchannel_auth;
mod backchannel_robustness;
mod bad_config;
mod container_logs;
mod container_network;
mod exec_in_running;
mod exec_with_tty;
mod exit_codes;
mod external_port_layer;
mod footprint;
mod inspect_writeback;
mod kernel_config;
mod kill_pid1;
mod missing_binary;
mod network_bad_input;
mod nfs_volume;
mod orphan_reaping;
mod publish_port;
mod restart_policy;
mod run_as_user;
mod run_hello;
mod run_interactive;
mod run_shell_pipeline;
mod run_timeout;
mod run_with_env_and_workdir;
mod signals_and_stop;
mod terminal_detach;
mod terminal_session_end;
mod use_named_volume;
mod volume_bad_input;
mod volume_copy_up;
mod volume_in_use;
mod volumes_clean_at_shutdown;
