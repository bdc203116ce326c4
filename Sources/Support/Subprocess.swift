// Running a helper tool (ip, sinfo, scontrol, munge) to its end and collecting what it said. Its
// standard error is read on another thread while standard output is read here, so a tool that writes
// much to both cannot block on a full pipe.

import Foundation

public struct SubprocessResult: Sendable {
    public var status: Int32
    public var output: Data
    /// Standard error as text, trimmed.
    public var error: String
    public var text: String { String(decoding: output, as: UTF8.self) }
}

public enum Subprocess {
    /// Runs `argv` (argv[0] absolute, or looked up on PATH through /usr/bin/env) with `input` on its
    /// standard input (none: empty). Throws only when the tool cannot be started.
    public static func run(_ argv: [String], input: Data? = nil) throws -> SubprocessResult {
        let p = Process()
        if argv[0].hasPrefix("/") {
            p.executableURL = URL(fileURLWithPath: argv[0])
            p.arguments = Array(argv.dropFirst())
        } else {
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = argv
        }
        let i = Pipe(), o = Pipe(), e = Pipe()
        p.standardInput = i
        p.standardOutput = o
        p.standardError = e
        try p.run()
        if let input { i.fileHandleForWriting.write(input) }
        try? i.fileHandleForWriting.close()
        final class Box: @unchecked Sendable { var data = Data() }
        let err = Box()
        let done = DispatchSemaphore(value: 0)
        Thread {
            err.data = e.fileHandleForReading.readDataToEndOfFile()
            done.signal()
        }.start()
        let out = o.fileHandleForReading.readDataToEndOfFile()
        done.wait()
        p.waitUntilExit()
        return SubprocessResult(
            status: p.terminationStatus, output: out,
            error: String(decoding: err.data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
