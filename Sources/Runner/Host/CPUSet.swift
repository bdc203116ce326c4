// Host CPU lists as Slurm and taskset write them ("0-3,8,10-11"), and the caller's affinity mask:
// a guest may only be given CPUs the caller itself may run on.

import CLinux
import Foundation

public struct CPUList: Equatable, Sendable, CustomStringConvertible {
    public let cpus: [Int]

    public init(_ cpus: [Int]) { self.cpus = cpus }

    public struct Invalid: Error, CustomStringConvertible { public let description: String }

    /// Parses "0-3,8"; refuses duplicates, reversed ranges and junk.
    public init(parsing s: String) throws(Invalid) {
        var out: [Int] = []
        let text = s.trimmingCharacters(in: .whitespaces)
        guard !text.isEmpty else { throw Invalid(description: "empty CPU list; write e.g. 0,1 or 2-5") }
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let r = part.split(separator: "-", omittingEmptySubsequences: false)
            guard r.count <= 2, let a = Int(r[0]), a >= 0, a < 4096 else {
                throw Invalid(description: "'\(part)' in CPU list '\(s)' is not a CPU number or range (write e.g. 0,1 or 2-5)")
            }
            let b = r.count == 2 ? Int(r[1]) : a
            guard let b, b >= a, b < 4096 else { throw Invalid(description: "'\(part)' in CPU list '\(s)' is not a valid range") }
            out += Array(a...b)
        }
        guard Set(out).count == out.count else { throw Invalid(description: "CPU list '\(s)' names a CPU twice") }
        cpus = out
    }

    public var count: Int { cpus.count }

    /// Compact form: 0-3,8.
    public var description: String {
        var parts: [String] = []
        var i = 0
        let s = cpus.sorted()
        while i < s.count {
            var j = i
            while j + 1 < s.count && s[j + 1] == s[j] + 1 { j += 1 }
            parts.append(i == j ? "\(s[i])" : "\(s[i])-\(s[j])")
            i = j + 1
        }
        return parts.joined(separator: ",")
    }

    /// The CPUs this process may run on.
    public static func callerAffinity() -> CPUList {
        var buf = [Int32](repeating: 0, count: 4096)
        let n = clinux_get_affinity(0, &buf, 4096)
        return CPUList(n > 0 ? buf[0..<Int(n)].map(Int.init) : [])
    }

    /// Affinity of any thread (from /proc, so it works for other processes' threads too).
    public static func affinity(ofThread tid: Int32, in pid: Int32) -> CPUList? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/status", encoding: .utf8),
            let line = s.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") })
        else { return nil }
        return try? CPUList(parsing: String(line.dropFirst("Cpus_allowed_list:".count)))
    }

    public static func pin(thread tid: Int32, to cpus: [Int]) throws {
        let c = cpus.map(Int32.init)
        let r = clinux_set_affinity(tid, c, Int32(c.count))
        if r != 0 { throw RunnerError.pinning("cannot pin thread \(tid) to CPUs \(CPUList(cpus)): \(String(cString: strerror(-r)))") }
    }
}
