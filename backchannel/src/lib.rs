//! The back-channel between a container VM's tether and the VCH port layer, below and
//! beside SSH: the serial synchronisation handshake that precedes every SSH connection, and
//! the names and payload layouts of the custom SSH requests. Both roles live here so the
//! tether (server) and the harness (client, playing the port layer) cannot drift apart.
//!
//! Every byte layout here is pinned by the tests at the bottom; a change that breaks them is
//! a wire change a VIC port layer would notice.
//!
//! The README follows: what crosses the back-channel and the other transports during an
//! exec, step by step.
#![doc = include_str!("../README.md")]

pub mod handshake;
pub mod ports;
pub mod requests;
pub mod services;
