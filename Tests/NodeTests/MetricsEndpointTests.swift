// slurm-vmd's Prometheus endpoint over a real socket: what it answers, and that the exposition it
// serves passes Debian's promtool (where installed; scripts/deps.sh installs it).

import Foundation
import NIOPosix
import Testing

@testable import Daemon
@testable import Telemetry

#if canImport(Glibc)
import Glibc
#endif

@Suite struct MetricsEndpointTests {
    /// One HTTP/1.0 request over TCP; the whole response.
    static func request(_ port: Int, _ line: String) throws -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard ok == 0 else { throw DaemonError.connection("connect: \(String(cString: strerror(errno)))") }
        let req = Array("\(line) HTTP/1.0\r\nHost: localhost\r\n\r\n".utf8)
        _ = req.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var out = [UInt8](), buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    @Test func itServesTheRegistryAtSlashMetricsAndNothingElse() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let endpoint = try MetricsEndpoint(listen: "127.0.0.1:0", group: group)
        defer { endpoint.close() }
        let port = Int(endpoint.address.split(separator: ":").last!)!
        Telemetry.start()
        Telemetry.failed(.exec)
        let r = try Self.request(port, "GET /metrics")
        #expect(r.hasPrefix("HTTP/1.0 200 OK"), "\(r.prefix(200))")
        #expect(r.contains("Content-Type: text/plain; version=0.0.4"), "\(r.prefix(300))")
        #expect(r.contains("# TYPE slurm_vm_failures_total counter"))
        #expect(r.contains(#"slurm_vm_failures_total{kind="guest_lost"} 0"#), "every kind is there from the start")
        #expect(r.contains("# HELP slurm_vm_prolog_seconds "))
        #expect(try Self.request(port, "GET /").hasPrefix("HTTP/1.0 404"))
        #expect(try Self.request(port, "POST /metrics").hasPrefix("HTTP/1.0 405"))
        #expect(throws: DaemonError.self) { try MetricsEndpoint(listen: "nowhere", group: group) }
    }

    @Test func theExpositionPassesPromtool() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool") else {
            print("SKIPPED: promtool is not installed (Debian's prometheus package; scripts/deps.sh installs it)")
            return
        }
        Telemetry.start()
        Telemetry.prologSeconds.record(.milliseconds(1500))
        Telemetry.broadcastRate.record(2.5e8)
        Telemetry.matched(.accepted)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/promtool")
        p.arguments = ["check", "metrics"]
        let input = Pipe(), output = Pipe()
        p.standardInput = input; p.standardOutput = output; p.standardError = output
        try p.run()
        input.fileHandleForWriting.write(Data(Telemetry.render()))
        try input.fileHandleForWriting.close()
        let said = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "promtool: \(said)")
    }
}
