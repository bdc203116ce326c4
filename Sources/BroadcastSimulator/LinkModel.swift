// What the simulated network is made of: every node has one port, with the same rate in each direction
// (a node can be slowed), a one-way latency, and a queueing discipline that decides what small messages
// and competing TCP flows cost. The physical constants are set here; the two per-queue constants are
// calibrated against the namespace testbed (docs/broadcast.md, "The curve to 1,024 nodes").

public struct LinkModel: Sendable {
    /// How a port queues what waits for the wire, as in scripts/netns_testbed.py.
    public enum Queue: String, Sendable, CaseIterable {
        /// Small packets in a class of their own ahead of the bulk FIFO (a port with fair queueing).
        case prio
        /// One drop-tail FIFO: requests and ACKs wait behind data.
        case bfifo
        /// A token bucket, drop-tail, no classes.
        case tbf
    }

    /// Link rate of each port and direction, bits a second, as tc shapes it (whole Ethernet frames).
    public var bitsPerSecond: Double
    /// TCP payload per frame: 1448 bytes (MSS with timestamps) in a 1514-byte Ethernet frame.
    public var payloadShare = 1448.0 / 1514.0
    /// Share of a port's upload that the ACKs of a full-rate download take: one 66-byte ACK for every
    /// two 1514-byte frames received. A rank still receiving forwards on what is left.
    public var ackShare = 66.0 / (2 * 1514.0)
    /// One-way delay of an idle path, seconds (veth and bridge: tens of microseconds).
    public var latency = 0.000_1
    public var queue: Queue
    /// Bytes a socket accepts ahead of the wire: a send is reported done once its last byte is in the
    /// socket buffer, so a sender may start the next while this much of the last is still queued.
    public var sendBuffer = 1_048_576.0
    /// Seconds from the common start until the ranks connect: process start, the manifest's exchange.
    public var startup = 0.0
    /// Seconds a small message (a request, an announcement) waits in a busy drop-tail port's queue
    /// behind data: a share of the queue's 10 ms.
    public var busyPortDelay: Double
    /// Share of a port's payload rate that two or more TCP flows competing in it keep: drop-tail cuts
    /// their bursts; with ACKs queued behind data, a flow's window also waits longer.
    public var sharedEfficiency: Double

    public init(bitsPerSecond: Double, queue: Queue) {
        self.bitsPerSecond = bitsPerSecond
        self.queue = queue
        (busyPortDelay, sharedEfficiency) = Self.calibrated(queue)
    }

    /// Payload bytes a second a port carries at full rate.
    public var payloadBytesPerSecond: Double { bitsPerSecond / 8 * payloadShare }

    /// (busyPortDelay, sharedEfficiency) per queue, fitted to the testbed's runs at 4, 8 and 16 nodes
    /// (docs/broadcast.md, "The curve to 1,024 nodes"): a small message waits about a quarter of the
    /// 10 ms queue on a busy drop-tail port; only bfifo's 250 KB, four 64 KiB GSO segments, costs
    /// competing flows rate (tbf holds its bucket besides).
    public static func calibrated(_ queue: Queue) -> (busyPortDelay: Double, sharedEfficiency: Double) {
        switch queue {
        case .prio: (0, 1.0)
        case .bfifo: (0.0025, 0.93)
        case .tbf: (0.0025, 1.0)
        }
    }
}
