//! Names both sides of `GetMetrics` and the shim's `/metrics` use, as
//! upstream's: the agent reports the guest's network devices with them, the
//! shim QEMU's.

/// The `item` label values of a `/proc/net/dev` line's 16 counters, in
/// the file's order.
pub const NETDEV_ITEMS: [&str; 16] = [
    "recv_bytes",
    "recv_packets",
    "recv_errs",
    "recv_drop",
    "recv_fifo",
    "recv_frame",
    "recv_compressed",
    "recv_multicast",
    "sent_bytes",
    "sent_packets",
    "sent_errs",
    "sent_drop",
    "sent_fifo",
    "sent_colls",
    "sent_carrier",
    "sent_compressed",
];
