// A shell in the place of a confined process (a file server, a VMM): run with the same spawn options,
// so what the confinement allows is seen without a guest.

import Foundation
import Testing

@testable import Runner

#if canImport(Glibc)
import Glibc
#endif

enum ShellStandIn {
    /// Runs `script` with /bin/sh under `options`, in `dir`; its output (stdout and stderr).
    static func run(_ script: String, in dir: String, _ options: SpawnOptions) throws -> String {
        let out = dir + "/.out"
        let fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(fd) }
        var o = options
        o.cwd = dir
        o.stdout = fd; o.stderr = fd
        let pid = try Processes.spawn("/bin/sh", ["-c", script], o)
        #expect(Processes.wait(pid, timeout: 20))
        return (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
    }

    /// A fresh directory anyone may write in.
    static func scratch(_ prefix: String) throws -> String {
        let dir = NSTemporaryDirectory() + "\(prefix)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        chmod(dir, 0o777)
        return dir
    }
}
