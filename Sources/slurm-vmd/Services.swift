// slurm-vmd's listeners as services of a ServiceGroup: each accept loop runs on its own thread and
// stops when the group shuts down gracefully (SIGTERM/SIGINT); connections in flight finish.

import Daemon
import Node
import Foundation
import Logging
import NIOPosix
import ServiceLifecycle
import Support
import Telemetry
#if canImport(Glibc)
import Glibc
#endif

/// Accepts connections on a listening socket and serves each on its own thread.
final class AcceptLoop: @unchecked Sendable {
    let fd: Int32
    let name: String
    let handle: @Sendable (Int32) -> Void
    let logger: Logger

    init(fd: Int32, name: String, logger: Logger, handle: @escaping @Sendable (Int32) -> Void) {
        self.fd = fd; self.name = name; self.logger = logger; self.handle = handle
    }

    func start() {
        let t = Thread { [self] in
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 {
                    if errno == EINTR || errno == ECONNABORTED { continue }
                    if errno == EMFILE || errno == ENFILE { logger.error("\(name): out of descriptors"); usleep(100_000); continue }
                    return  // the socket was shut down
                }
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)  // never inherited by the VMMs we start
                let w = Thread { [handle] in handle(c) }
                w.stackSize = 1 << 20
                w.start()
            }
        }
        t.name = name
        t.start()
    }

    func stop() { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
}

/// One listening socket served until graceful shutdown: the API's Unix socket or the blob service.
struct ListenerService: Service {
    let name: String
    let logger: Logger
    let open: @Sendable () throws -> Int32
    let handle: @Sendable (Int32) -> Void
    var onStop: @Sendable () -> Void = {}

    /// The Unix-socket API.
    static func control(api: API, path: String, logger: Logger) -> ListenerService {
        ListenerService(
            name: "api on \(path)", logger: logger, open: { try LineConnection.listen(path) },
            handle: { api.serve(LineConnection(fd: $0)) }, onStop: { unlink(path) })
    }

    /// The catalog role's blob service over TCP.
    static func blobs(api: API, listen: String, logger: Logger) -> ListenerService {
        ListenerService(
            name: "blob service on \(listen)", logger: logger, open: { try TCPListener.open(listen) },
            handle: { api.serveBlobs($0) })
    }

    /// The node role's push listener over TCP (`slurm-vm image push`).
    static func push(api: API, listen: String, logger: Logger) -> ListenerService {
        ListenerService(
            name: "push listener on \(listen)", logger: logger, open: { try TCPListener.open(listen) },
            handle: { api.servePush($0) })
    }

    func run() async throws {
        let loop = AcceptLoop(fd: try open(), name: name, logger: logger, handle: handle)
        loop.start()
        logger.info("\(name): listening")
        try? await gracefulShutdown()
        loop.stop()
        onStop()
        logger.info("\(name): stopped")
    }
}

enum TCPListener {
    static func open(_ address: String) throws -> Int32 {
        guard let (host, port) = HostPort.split(address) else { throw DaemonError.config("listen address '\(address)' is not HOST:PORT") }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw DaemonError.connection("socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host.isEmpty ? "0.0.0.0" : host, &a.sin_addr) == 1 else {
            close(fd); throw DaemonError.config("listen address: '\(host)' is not an IPv4 address")
        }
        let r = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard r == 0, Glibc.listen(fd, 128) == 0 else {
            let e = String(cString: strerror(errno)); close(fd)
            throw DaemonError.connection("cannot listen on \(address): \(e)")
        }
        return fd
    }
}

/// The epilog tears a job's guests down; this catches what it could not (slurm-vmd was restarting
/// when the epilog ran, or the epilog never ran): every `interval`, guests of jobs that Slurm no
/// longer runs are destroyed.
struct JobReaper: Service {
    let node: NodeManager
    let logger: Logger
    var interval: Duration = .seconds(15)

    func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            for s in node.jobs() where SlurmQuery.isRunning(s.job) == false {
                logger.info("job \(s.job) has ended without its epilog reaching us: tearing its guests down")
                node.teardown(job: s.job)
            }
        }
    }
}

/// The Prometheus endpoint (docs/operations.md), until graceful shutdown.
struct MetricsService: Service {
    let listen: String
    let logger: Logger

    func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let endpoint = try MetricsEndpoint(listen: listen, group: group)
        Telemetry.start()
        logger.info("metrics on http://\(endpoint.address)/metrics")
        try? await gracefulShutdown()
        endpoint.close()
        try? await group.shutdownGracefully()
    }
}
