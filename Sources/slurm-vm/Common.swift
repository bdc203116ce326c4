// What every command shares: opening the catalog, reporting errors as one clear line (exit 1 for a
// failure, 2 for bad input), and progress on the terminal.

import ArgumentParser
import Catalog
import Foundation
import ImageBuilder
import Runner
import Support
#if canImport(Glibc)
import Glibc
#endif

/// The node's slurm-vmd, for the commands that ask it (`job exec`, `jobs`).
struct NodeSocketOption: ParsableArguments {
    @Option(name: .customLong("socket"), help: "The node's slurm-vmd socket (default: SLURM_VM_NODE_SOCKET, else slurm-vmd's default).")
    var path: String = ProcessInfo.processInfo.environment["SLURM_VM_NODE_SOCKET"] ?? "/run/slurm-vm/slurm-vmd.sock"
}

struct CatalogOption: ParsableArguments {
    @Option(
        name: .customLong("catalog"), help: ArgumentHelp("The catalog directory (default: $SLURM_VM_CATALOG or /var/lib/slurm-vm).", valueName: "dir")
    )
    var path: String?

    func open() throws -> Catalog { try Catalog(root: path ?? Catalog.defaultRoot) }
}

func warn(_ s: String) { FileHandle.standardError.write(Data("slurm-vm: \(s)\n".utf8)) }

/// Runs a command body; known errors become one message on stderr and an exit code.
func reporting<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch  where Teardown.interrupted {
        // Ctrl-C (or SIGTERM) is tearing the guests down on another thread; what failed here failed
        // because of it. That thread ends the process with 128 + the signal once everything is gone.
        while true { pause() }
    } catch let e as ExitCode { throw e } catch let e as CleanExit { throw e } catch let e as ValidationError { throw e } catch let e
        as VMRequest.Invalid
    { warn("error: \(e)"); throw ExitCode(2) } catch let e as JobShape.Invalid { warn("error: \(e)"); throw ExitCode(2) } catch let e
        as CPUList.Invalid
    { warn("error: \(e)"); throw ExitCode(2) } catch let e as CatalogError {
        warn("error: \(e)")
        switch e {
        case .invalidName, .invalidAttribute, .protectedAttribute: throw ExitCode(2);
        default: throw ExitCode(1)
        }
    } catch let e as RunnerError {
        warn("error: \(e)")
        if case .invalidRequest = e { throw ExitCode(2) }
        throw ExitCode(1)
    } catch let e as BuildError { warn("error: \(e)"); throw ExitCode(1) } catch let e as FileError {
        warn("error: \(e)"); throw ExitCode(1)
    } catch let e as AgentError { warn("error: \(e)"); throw ExitCode(1) } catch { warn("error: \(error)"); throw ExitCode(1) }
}

/// Build progress: an updating line on a terminal, plain lines otherwise.
final class TerminalProgress: BuildProgress, @unchecked Sendable {
    let tty = isatty(2) == 1
    let start = Date()
    let lock = NSLock()
    var current = ""

    func elapsed() -> String { String(format: "%5.1fs", Date().timeIntervalSince(start)) }

    func phase(_ name: String, _ detail: String) {
        lock.lock(); defer { lock.unlock() }
        if tty && !current.isEmpty { FileHandle.standardError.write(Data("\n".utf8)) }
        current = name
        FileHandle.standardError.write(Data("[\(elapsed())] \(name): \(detail)\(tty ? "" : "\n")".utf8))
    }

    func advance(_ done: Int, _ total: Int, _ detail: String) {
        lock.lock(); defer { lock.unlock() }
        let width = 24
        let filled = total > 0 ? done * width / total : 0
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        if tty {
            FileHandle.standardError.write(Data("\r\u{1b}[2K[\(elapsed())] \(current) [\(bar)] \(done)/\(total) \(detail)".utf8))
        } else if done == total || done % 10 == 0 {
            FileHandle.standardError.write(Data("[\(elapsed())] \(current) \(done)/\(total) \(detail)\n".utf8))
        }
    }

    func finish() { if tty { FileHandle.standardError.write(Data("\n".utf8)) } }
}

func humanBytes(_ n: Int64) -> String {
    let d = Double(n), k = 1024.0
    if d >= k * k * k { return String(format: "%.1f GiB", d / (k * k * k)) }
    if d >= k * k { return String(format: "%.1f MiB", d / (k * k)) }
    if d >= k { return String(format: "%.1f KiB", d / k) }
    return "\(n) B"
}

/// A plain text table with aligned columns.
func table(_ header: [String], _ rows: [[String]]) -> String {
    var w = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() where i < w.count { w[i] = max(w[i], c.count) } }
    func line(_ r: [String]) -> String {
        r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: w[i], withPad: " ", startingAt: 0) }.joined(separator: "  ")
    }
    return ([line(header)] + rows.map(line)).joined(separator: "\n")
}

func jsonString(_ obj: Any) -> String {
    let d = (try? JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])) ?? Data()
    return String(decoding: d, as: UTF8.self)
}
