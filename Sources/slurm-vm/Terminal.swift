// The local terminal of a command run in a guest on a terminal of its own (srun --pty, vm exec -t,
// job exec from a terminal): its size goes to the guest at the start and on every change (SIGWINCH),
// and it is put in raw mode for the command's life, so what is typed — Ctrl-C, Ctrl-Z, Ctrl-D
// included — reaches the guest's terminal as bytes and acts on the guest's foreground process group
// there, not on us. Its modes are restored before we end.

import ArgumentParser
import Foundation
import Runner
#if canImport(Glibc)
import Glibc
#endif

enum Terminal {
    /// The size of the terminal on `fd`, nil if it is not a terminal (or reports no size). Slurm's
    /// SLURM_PTY_WIN_ROW/COL are the fallback for a pty whose size was not set.
    static func size(of fd: Int32) -> TerminalSize? {
        guard isatty(fd) == 1 else { return nil }
        var ws = winsize()
        let got = withUnsafeMutablePointer(to: &ws) { ioctl(fd, UInt(TIOCGWINSZ), $0) }
        if got == 0, ws.ws_row > 0, ws.ws_col > 0 {
            return TerminalSize(rows: UInt32(ws.ws_row), columns: UInt32(ws.ws_col))
        }
        let env = ProcessInfo.processInfo.environment
        if let r = env["SLURM_PTY_WIN_ROW"].flatMap(UInt32.init), let c = env["SLURM_PTY_WIN_COL"].flatMap(UInt32.init), r > 0, c > 0 {
            return TerminalSize(rows: r, columns: c)
        }
        return TerminalSize(rows: 24, columns: 80)
    }

    /// For `-t`: the size of the terminal that stdin and stdout must be, and the TERM to pass along
    /// (as ssh -t does); nil when not asked for.
    static func requested(_ tty: Bool) throws -> (size: TerminalSize, env: [String])? {
        guard tty else { return nil }
        guard let size = size(of: 0), isatty(1) == 1 else { throw ValidationError("-t needs a terminal as stdin and stdout") }
        return (size, ProcessInfo.processInfo.environment["TERM"].map { ["TERM=\($0)"] } ?? [])
    }

    nonisolated(unsafe) private static var saved: (fd: Int32, modes: termios)?

    /// Raw mode on the terminal on `fd` until restore(): no echo, no line editing, no signals from
    /// special characters, output unchanged.
    static func makeRaw(_ fd: Int32) {
        var t = termios()
        guard tcgetattr(fd, &t) == 0 else { return }
        saved = (fd, t)
        cfmakeraw(&t)
        tcsetattr(fd, TCSADRAIN, &t)
    }

    /// Gives the terminal back its modes (before we exit, whichever way).
    static func restore() {
        guard var s = saved else { return }
        tcsetattr(s.fd, TCSADRAIN, &s.modes)
        saved = nil
    }
}
