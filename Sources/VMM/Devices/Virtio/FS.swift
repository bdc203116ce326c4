// virtio-fs (virtio 1.x §5.11) with its queues in a vhost-user back end (Debian's virtiofsd): the VMM
// gives the device's identity and configuration (the tag the guest mounts, one request queue beside
// the high-priority one) and wires the back end straight to KVM — each queue's kick is an ioeventfd on
// the notify register, each call an irqfd on the device's interrupt — so FUSE requests never pass
// through the VMM. The features offered are the back end's, limited to the split-ring ones this
// transport carries (indirect descriptors, event index).

import CLinux
#if canImport(Glibc)
import Glibc
#endif

public final class VirtioFS: ModernVirtioDevice, @unchecked Sendable {
    public static let tagBytes = 36
    /// Queue 0 is the high-priority queue, queue 1 the one request queue.
    public static let queueSize: UInt16 = 1024
    static let allowed: UInt64 = 1 << 28 | 1 << 29  // RING_INDIRECT_DESC, RING_EVENT_IDX

    public let deviceType: UInt32 = 26
    public let tag: String
    let backend: VhostUserFrontend
    public let features: UInt64
    public let queueMaxSizes: [UInt16] = [VirtioFS.queueSize, VirtioFS.queueSize]
    public let configSize = VirtioFS.tagBytes + 4
    public let interruptsOutOfBand = true
    let config: [UInt8]
    /// Per queue: the eventfd the guest's notify signals (the back end's kick) and the one the back
    /// end signals (the guest's interrupt).
    var kick: [Int32] = [], call: [Int32] = []

    /// Connects to the back end at `socket`; the guest mounts the file system by `tag`.
    public init(socket: String, tag: String) throws {
        let t = Array(tag.utf8)
        guard !t.isEmpty, t.count <= Self.tagBytes, !t.contains(0) else {
            throw VMMError.config("a virtio-fs tag is 1 to \(Self.tagBytes) bytes without NUL, not '\(tag)'")
        }
        self.tag = tag
        backend = try VhostUserFrontend(path: socket)
        features = backend.backendFeatures & Self.allowed
        config = t + [UInt8](repeating: 0, count: Self.tagBytes - t.count) + le(UInt32(1))
        for _ in queueMaxSizes {
            let k = clinux_eventfd(), c = clinux_eventfd()
            guard k >= 0, c >= 0 else { throw VMMError.host("eventfd: \(String(cString: strerror(-min(k, c))))") }
            kick.append(k); call.append(c)
        }
    }

    deinit { for fd in kick + call { close(fd) } }

    /// The socket the back end's death shows on.
    public var backendSocket: Int32 { backend.socket }

    public func readConfig(_ offset: Int) -> UInt8 { offset < config.count ? config[offset] : 0 }
    public func writeConfig(_ offset: Int, _ value: UInt8) {}  // read-only (§5.11.4)

    public func plugged(base: UInt64, gsi: UInt32, vm: VM) throws {
        for i in queueMaxSizes.indices {
            try vm.ioeventfd(address: base + VirtioMMIOTransport.notifyRegister, value: UInt32(i), fd: kick[i])
            try vm.irqfd(gsi: gsi, fd: call[i])
        }
    }

    public func activate(features: UInt64, queues: [QueueSetup], memory: GuestMemory) throws {
        let ready = queues.enumerated().filter { $0.element.ready }.map { (index: $0.offset, setup: $0.element) }
        try backend.start(features: features, memory: memory, queues: ready, kick: kick, call: call)
    }

    public func notify(_ queue: Int) { HostFDs.signal(kick[queue]) }

    public func reset() {
        // A back end that cannot stop its rings is gone; the socket watcher ends the VM for it.
        try? backend.stop()
    }
}
