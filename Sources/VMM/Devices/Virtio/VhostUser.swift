// The front end of the vhost-user protocol (QEMU's docs/interop/vhost-user.rst): the VMM hands a
// device's rings to a back-end process (Debian's virtiofsd) over a Unix socket — the guest's RAM as a
// memfd, each ring's addresses in that mapping, an eventfd the back end is kicked through (KVM
// signals it on the guest's notify, an ioeventfd) and one it signals when it used buffers (KVM turns
// that into the guest's interrupt, an irqfd). After that the VMM is out of the data path.
//
// Messages: a 12-byte header (request, flags: version 1, bit 2 a reply, bit 3 a reply wanted; payload
// size) and the payload; descriptors ride along as SCM_RIGHTS. The back end is another process and its
// replies are checked like any input: the request they answer, their size, a bounded wait.

import CLinux
#if canImport(Glibc)
import Glibc
#endif

public enum VhostUserRequest: UInt32, Sendable {
    case getFeatures = 1, setFeatures = 2, setOwner = 3, setMemTable = 5
    case setVringNum = 8, setVringAddr = 9, setVringBase = 10, getVringBase = 11
    case setVringKick = 12, setVringCall = 13, getProtocolFeatures = 15, setProtocolFeatures = 16
    case setVringEnable = 18
}

/// One message: what the front end writes and what it reads back.
public struct VhostUserMessage: Sendable, Equatable {
    public static let headerSize = 12
    public static let version: UInt32 = 1
    public static let replyFlag: UInt32 = 1 << 2
    public static let needReplyFlag: UInt32 = 1 << 3
    /// The largest payload the front end accepts in a reply (a memory table is the largest message).
    public static let maxPayload = 4096

    public var request: UInt32
    public var flags: UInt32
    public var payload: [UInt8]

    public init(_ request: VhostUserRequest, flags: UInt32 = VhostUserMessage.version, payload: [UInt8] = []) {
        self.request = request.rawValue; self.flags = flags; self.payload = payload
    }

    public var bytes: [UInt8] { le(request) + le(flags) + le(UInt32(payload.count)) + payload }

    /// The header of a reply to `request`: checks it is one and says how long its payload is.
    public static func replyLength(_ header: [UInt8], to request: UInt32) throws -> Int {
        guard header.count == headerSize else { throw VMMError.device("vhost-user: a short reply header (\(header.count) bytes)") }
        let r = u32(header, 0), f = u32(header, 4), n = Int(u32(header, 8))
        guard f & 0x3 == version, f & replyFlag != 0 else {
            throw VMMError.device("vhost-user: the back end answered request \(request) with flags \(hex(f)), not a version-1 reply")
        }
        guard r == request else { throw VMMError.device("vhost-user: the back end answered request \(r) where \(request) was asked") }
        guard n <= maxPayload else { throw VMMError.device("vhost-user: a reply of \(n) bytes to request \(request) (at most \(maxPayload))") }
        return n
    }

    static func u32(_ b: [UInt8], _ o: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[o + $1]) << (8 * UInt32($1)) } }
    static func u64(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }
}

public final class VhostUserFrontend: @unchecked Sendable {
    public static let protocolFeaturesBit: UInt64 = 1 << 30
    static let replyAck: UInt64 = 1 << 3
    /// A back end that does not answer within this many seconds is taken for hung.
    static let replyTimeoutMS: Int32 = 10_000

    public let path: String
    public let socket: Int32
    /// What the back end offers (GET_FEATURES), the protocol-features bit included.
    public private(set) var backendFeatures: UInt64 = 0
    public private(set) var protocolFeatures: UInt64 = 0
    /// Queues started since the last stop (GET_VRING_BASE stops them).
    var started: [Int] = []

    /// Connects to the back end's socket and negotiates the protocol (features, protocol features,
    /// ownership); the device's own features are set when the driver has accepted them.
    public init(path: String) throws {
        self.path = path
        guard let addr = HostFDs.unixAddress(path) else {
            throw VMMError.device("vhost-user: the socket path '\(path)' is empty or longer than \(HostFDs.maxPath) bytes")
        }
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VMMError.device("vhost-user: socket: \(String(cString: strerror(errno)))") }
        let r = HostFDs.with(addr) { connect(fd, $0, $1) }
        guard r == 0 else {
            let e = errno
            close(fd)
            throw VMMError.device("vhost-user: cannot connect to \(path): \(String(cString: strerror(e))) (is its back end running?)")
        }
        socket = fd
        do {
            backendFeatures = try getU64(.getFeatures)
            if backendFeatures & Self.protocolFeaturesBit != 0 {
                let offered = try getU64(.getProtocolFeatures)
                protocolFeatures = offered & Self.replyAck
                try send(VhostUserMessage(.setProtocolFeatures, payload: le(protocolFeatures)))
            }
            try send(VhostUserMessage(.setOwner))
        } catch {
            close(fd)
            throw error
        }
    }

    deinit { close(socket) }

    /// Starts the device: the features the driver accepted, guest RAM, then each queue's size, start
    /// index, addresses (in this process's mapping, as the back end translates them through the
    /// memory table), kick and call descriptors, enabled.
    public func start(features: UInt64, memory: GuestMemory, queues: [(index: Int, setup: QueueSetup)], kick: [Int32], call: [Int32]) throws {
        guard let memfd = memory.fd else { throw VMMError.device("vhost-user needs guest memory in a memfd (shared)") }
        let negotiated = features | (backendFeatures & Self.protocolFeaturesBit)
        try send(VhostUserMessage(.setFeatures, payload: le(negotiated)))
        let host = UInt64(UInt(bitPattern: memory.base))
        let table = le(UInt32(1)) + le(UInt32(0)) + le(UInt64(0)) + le(memory.size) + le(host) + le(UInt64(0))
        try send(VhostUserMessage(.setMemTable, payload: table), fds: [memfd])
        for (i, q) in queues {
            let index = UInt32(i)
            try send(VhostUserMessage(.setVringNum, payload: le(index) + le(UInt32(q.size))))
            try send(VhostUserMessage(.setVringBase, payload: le(index) + le(UInt32(0))))
            let addr = le(index) + le(UInt32(0)) + le(host + q.descriptors) + le(host + q.deviceArea) + le(host + q.driverArea) + le(UInt64(0))
            try send(VhostUserMessage(.setVringAddr, payload: addr))
            try send(VhostUserMessage(.setVringKick, payload: le(UInt64(index))), fds: [kick[i]])
            try send(VhostUserMessage(.setVringCall, payload: le(UInt64(index))), fds: [call[i]])
            if negotiated & Self.protocolFeaturesBit != 0 {
                try send(VhostUserMessage(.setVringEnable, payload: le(index) + le(UInt32(1))))
            }
            started.append(i)
        }
    }

    /// Stops every started queue (the driver reset the device); the back end lets go of the rings.
    public func stop() throws {
        defer { started = [] }
        for i in started {
            let reply = try call(VhostUserMessage(.getVringBase, payload: le(UInt32(i)) + le(UInt32(0))))
            guard reply.count == 8 else { throw VMMError.device("vhost-user: GET_VRING_BASE answered with \(reply.count) bytes, not 8") }
        }
    }

    func getU64(_ r: VhostUserRequest) throws -> UInt64 {
        let reply = try call(VhostUserMessage(r))
        guard reply.count == 8 else { throw VMMError.device("vhost-user: request \(r.rawValue) answered with \(reply.count) bytes, not 8") }
        return VhostUserMessage.u64(reply, 0)
    }

    /// Sends a message that has no reply of its own; with REPLY_ACK, asks for one and checks it.
    func send(_ m: VhostUserMessage, fds: [Int32] = []) throws {
        guard protocolFeatures & Self.replyAck != 0 else { return try write(m, fds: fds) }
        var m = m
        m.flags |= VhostUserMessage.needReplyFlag
        let reply = try call(m, fds: fds)
        guard reply.count == 8 else { throw VMMError.device("vhost-user: an acknowledgement of \(reply.count) bytes, not 8") }
        let status = VhostUserMessage.u64(reply, 0)
        guard status == 0 else { throw VMMError.device("vhost-user: the back end at \(path) refused request \(m.request) (status \(status))") }
    }

    /// Sends a message and returns its reply's payload.
    func call(_ m: VhostUserMessage, fds: [Int32] = []) throws -> [UInt8] {
        try write(m, fds: fds)
        let header = try readExactly(VhostUserMessage.headerSize)
        let n = try VhostUserMessage.replyLength(header, to: m.request)
        return try readExactly(n)
    }

    func write(_ m: VhostUserMessage, fds: [Int32]) throws {
        let b = m.bytes
        let r = b.withUnsafeBytes { p in
            fds.withUnsafeBufferPointer { clinux_send_with_fds(socket, p.baseAddress, UInt(p.count), $0.baseAddress, Int32(fds.count)) }
        }
        guard r == b.count else {
            throw VMMError.device(
                "vhost-user: cannot send request \(m.request) to \(path): \(r < 0 ? String(cString: strerror(Int32(-r))) : "a short write")")
        }
    }

    func readExactly(_ n: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var got = 0
        while got < n {
            var p = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, Self.replyTimeoutMS)
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else {
                throw VMMError.device("vhost-user: the back end at \(path) did not answer within \(Self.replyTimeoutMS / 1000) s")
            }
            let r = out.withUnsafeMutableBytes { recv(socket, $0.baseAddress! + got, n - got, 0) }
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { throw VMMError.device("vhost-user: the back end at \(path) closed its socket") }
            got += r
        }
        return out
    }
}
