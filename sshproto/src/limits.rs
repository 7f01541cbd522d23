//! Bounds on what a connection buffers and accepts: part of the configuration, in a module
//! of its own because the connection state is sized from it.

/// Bounds on what a connection buffers and accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest `packet_length` accepted from the peer (RFC 4253 requires at least 35000).
    pub max_packet_len: u32,
    /// Receive window advertised for each channel: the most channel data (stdout +
    /// stderr) buffered per channel before the peer must wait for the reader.
    pub channel_window: u32,
    /// Largest data chunk the peer may send in one channel packet.
    pub channel_max_packet: u32,
    /// Open channels (and undecided incoming opens) per connection.
    pub max_channels: usize,
    /// Requests the peer may leave unanswered at once, per connection (global) and per
    /// channel; also the per-channel queue of requests no handler took.
    pub max_pending_requests: usize,
    /// Channel data queued for sending before writers wait (per connection).
    pub outbound_buffer: usize,
    /// User authentication attempts before the server disconnects.
    pub max_auth_attempts: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet_len: 256 * 1024,
            channel_window: 2 * 1024 * 1024,
            channel_max_packet: 32 * 1024,
            max_channels: 256,
            max_pending_requests: 64,
            outbound_buffer: 256 * 1024,
            max_auth_attempts: 20,
        }
    }
}
