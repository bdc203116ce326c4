// slurm-vm-vmm: the embedded VMM as its own small process, one per guest (the runner starts it, as it
// starts QEMU). No Foundation, so it stays within a few MiB beyond guest RAM.
//
//   slurm-vm-vmm --kernel FILE [--initrd FILE] [--append ARGS] [--vcpus N] [--mem MiB]
//                [--cpus LIST] [--housekeeping CPU] [--hugepages] [--console FILE [--console-limit BYTES]] [--report FILE] [--ready FILE]
//                [--agent-socket PATH] [--disk FILE [--disk-writable]] [--fs SOCKET,TAG]...
//                [--net-fd FD --mac MAC [--mtu N]] [--pit] [--no-seccomp] [--kvm-fd FD]
//
// Files may be given as fd:N, a descriptor the parent opened and handed in (--kernel, --initrd,
// --disk); --kvm-fd N is /dev/kvm opened by the parent. A VMM started under its own unprivileged uid
// (the runner does so as root) can then neither see nor open those files itself.
// --pit adds the in-kernel 8254 timer (implied by acpi=off in --append: Linux without ACPI needs it); with
// our ACPI tables Linux never touches it, and without it the VM is torn down about 13 ms sooner.
// --agent-socket PATH listens there for the host end of the guest agent's virtio-console port
// (org.slurm-vm.agent); --disk FILE is the guest's virtio-blk disk, read-only unless --disk-writable.
// --fs SOCKET,TAG adds a virtio-fs device whose queues a vhost-user back end (virtiofsd) listening on
// SOCKET serves; the guest mounts it by TAG. Guest RAM is then a memfd shared with the back ends.
// --net-fd FD is an open tap (IFF_VNET_HDR) the runner hands in, the guest's virtio-net with --mac and
// --mtu (default 1500): the VMM never opens a network device itself.
//
// --ready FILE gets the vCPUs' host thread ids (one line, comma-separated) once all run pinned, written
// to FILE.tmp and renamed, so a reader never sees half of it. --report FILE gets how the guest ended
// and the timings (report_monotonic_us: CLOCK_MONOTONIC as it is written, just before exit), at the end.
//
// Once the machine is built and before guest code runs, the VMM confines itself to a seccomp allowlist
// (Seccomp.swift); a system call outside it stops the VMM with status 159, naming the call on stderr.
// --no-seccomp leaves the filter out, for diagnosing a VMM the filter stopped. --seccomp-selftest makes
// the VMM call socket(2) right after confining itself: how the tests see a violation stopped and reported.
//
// Exit status: the guest's exit-port status (0–255) when it wrote one; 0 when it reset or shut down;
// 125 when the VMM could not build or run the VM (the reason on stderr); 159 when its seccomp filter
// stopped it.

import Sizes
import VMM
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

func say(_ msg: String) {
    let b = Array("slurm-vm-vmm: \(msg)\n".utf8)
    b.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
}

func fail(_ msg: String, _ code: Int32 = 125) -> Never {
    say(msg)
    exit(code)
}

func readFile(_ path: String) -> [UInt8] {
    let fd = HostFDs.open(path, O_RDONLY)
    guard fd >= 0 else { fail("cannot open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0, st.st_size >= 0, st.st_size < 1 << 32 else { fail("cannot read \(path)") }
    var out = [UInt8](repeating: 0, count: Int(st.st_size))
    var off = 0
    while off < out.count {
        let n = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + off, $0.count - off) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { fail("cannot read \(path): \(n == 0 ? "it ended early" : String(cString: strerror(errno)))") }
        off += n
    }
    return out
}

func cpuList(_ s: String) -> [Int] {
    var out: [Int] = []
    for part in s.split(separator: ",") {
        let r = part.split(separator: "-", omittingEmptySubsequences: false)
        guard r.count <= 2, let a = Int(r[0]), a >= 0, let b = r.count == 2 ? Int(r[1]) : a, b >= a, b < 4096 else {
            fail("--cpus '\(s)' is not a CPU list such as 2,3 or 4-7", 2)
        }
        out += Array(a...b)
    }
    return out
}

func megabytes(_ s: String) -> Int {
    do { return Int(ByteSize.mebibytes(try ByteSize.parse(s, bare: .mebibytes))) } catch { fail("--mem: \(error)", 2) }
}

var kernelPath: String?, initrdPath: String?, append = "", vcpus = 1, mem = 64, cpus: [Int] = [], housekeeping: Int?
var hugepages = false, pit = false, consolePath: String?, reportPath: String?, readyPath: String?
var agentSocket: String?, diskPath: String?, diskWritable = false, fileSystems: [(socket: String, tag: String)] = []
var netFD: Int32?, mac: [UInt8]?, mtu = 1500
var seccomp = true, seccompSelfTest = false, kvmFD: Int32?, consoleLimit = Int.max
var args = CommandLine.arguments.dropFirst()
@MainActor func value(_ flag: String) -> String {
    guard let v = args.popFirst() else { fail("\(flag) needs a value", 2) }
    return v
}
while let a = args.popFirst() {
    switch a {
    case "--kernel": kernelPath = value(a)
    case "--initrd": initrdPath = value(a)
    case "--append": append = value(a)
    case "--vcpus": guard let v = Int(value(a)), v >= 1 else { fail("--vcpus must be a positive number", 2) }; vcpus = v
    case "--mem": mem = megabytes(value(a))
    case "--cpus": cpus = cpuList(value(a))
    case "--housekeeping": guard let v = Int(value(a)), v >= 0 else { fail("--housekeeping must be a CPU id", 2) }; housekeeping = v
    case "--hugepages": hugepages = true
    case "--pit": pit = true
    case "--no-seccomp": seccomp = false
    case "--kvm-fd": guard let v = Int32(value(a)), v >= 0 else { fail("--kvm-fd must be an open descriptor of /dev/kvm", 2) }; kvmFD = v
    case "--seccomp-selftest": seccompSelfTest = true
    case "--console": consolePath = value(a)
    case "--console-limit":
        guard let v = Int(value(a)), v >= 4096 else { fail("--console-limit must be a byte count of at least 4096", 2) }
        consoleLimit = v
    case "--report": reportPath = value(a)
    case "--ready": readyPath = value(a)
    case "--agent-socket": agentSocket = value(a)
    case "--disk": diskPath = value(a)
    case "--disk-writable": diskWritable = true
    case "--fs":
        let v = value(a)
        guard let comma = v.lastIndex(of: ","), comma != v.startIndex, v.index(after: comma) != v.endIndex else {
            fail("--fs '\(v)' is not SOCKET,TAG (a vhost-user socket and the tag the guest mounts)", 2)
        }
        fileSystems.append((String(v[..<comma]), String(v[v.index(after: comma)...])))
    case "--net-fd": guard let v = Int32(value(a)), v >= 0 else { fail("--net-fd must be an open descriptor number", 2) }; netFD = v
    case "--mac":
        let v = value(a)
        let bytes = v.split(separator: ":").compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        guard bytes.count == 6, v.split(separator: ":").count == 6 else { fail("--mac '\(v)' is not a MAC address such as 52:54:00:12:34:56", 2) }
        mac = bytes
    case "--mtu": guard let v = Int(value(a)), (68...65_521).contains(v) else { fail("--mtu must be 68 to 65521", 2) }; mtu = v
    case "-h", "--help":
        print(
            "usage: slurm-vm-vmm --kernel FILE [--initrd FILE] [--append ARGS] [--vcpus N] [--mem MiB] [--cpus LIST] [--housekeeping CPU] [--hugepages] [--console FILE [--console-limit BYTES]] [--report FILE] [--ready FILE] [--agent-socket PATH] [--disk FILE [--disk-writable]] [--fs SOCKET,TAG]... [--net-fd FD --mac MAC [--mtu N]] [--pit] [--no-seccomp] [--kvm-fd FD]"
        )
        exit(0)
    default: fail("unknown option \(a) (see --help)", 2)
    }
}
guard let kernelPath else { fail("--kernel is required", 2) }

/// The console log, cut off at --console-limit bytes: a guest that writes its console without end
/// fills no disk. vCPU threads write it concurrently (each serial port write is one call).
final class ConsoleLog: Sendable {
    let fd: Int32, limit: Int
    let written = Mutex(0)
    static let cutOff = Array("\n[slurm-vm: the console log ends here; the guest wrote more]\n".utf8)
    init(fd: Int32, limit: Int) { self.fd = fd; self.limit = limit }

    func write(_ bytes: UnsafeRawBufferPointer) {
        written.withLock { written in
            guard written < limit else { return }  // cut off already
            let room = limit - Self.cutOff.count - written
            if bytes.count <= room {
                _ = Glibc.write(fd, bytes.baseAddress, bytes.count)
                written += bytes.count
                return
            }
            // What fits, then the note that the log ends here (serial writes come a byte at a time).
            if room > 0 { _ = Glibc.write(fd, bytes.baseAddress, room) }
            _ = Self.cutOff.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            written = limit
        }
    }
}
let console: ConsoleLog
if let p = consolePath {
    let fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
    guard fd >= 0 else { fail("cannot open the console log \(p): \(String(cString: strerror(errno)))") }
    console = ConsoleLog(fd: fd, limit: consoleLimit)
} else {
    console = ConsoleLog(fd: 1, limit: Int.max)
}
let start = Clock.now()
@Sendable func writeAtomically(_ text: String, to path: String) {
    let tmp = path + ".tmp"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { return }
    _ = Array(text.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    rename(tmp, path)
}
if (netFD == nil) != (mac == nil) { fail("--net-fd and --mac go together", 2) }
if diskWritable && diskPath == nil { fail("--disk-writable needs --disk", 2) }
/// Builds the machine. The kernel and initramfs are read here and are gone once they are in guest
/// memory: a global would keep both (17 MiB for Debian's) for the guest's lifetime.
@MainActor func buildMachine() -> Machine {
    var config = MachineConfig(
        kernel: readFile(kernelPath), initrd: initrdPath.map(readFile), commandLine: append, vcpus: vcpus, memoryMB: mem,
        cpus: cpus, housekeeping: housekeeping, hugepages: hugepages,
        console: { bytes in bytes.withUnsafeBytes { console.write($0) } })
    config.agentSocket = agentSocket
    config.kvmFD = kvmFD
    config.pit = pit
    config.disk = diskPath
    config.diskWritable = diskWritable
    config.fileSystems = fileSystems
    if let netFD, let mac { config.network = (netFD, mac, mtu) }
    if seccomp || seccompSelfTest {
        let selfTest = seccompSelfTest
        config.confine = {
            try Seccomp.confine()
            if selfTest { _ = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0) }
        }
    }
    if let readyPath { config.running = { tids in writeAtomically(tids.map(String.init).joined(separator: ",") + "\n", to: readyPath) } }
    do { return try Machine(config) } catch { fail("\(error)") }
}
let machine = buildMachine()
let end = machine.run()

if let reportPath {
    func ms(_ t: Double?) -> String { t.map { String(Int(($0 * 1e6).rounded())) } ?? "" }
    var rss = ""
    if let f = fopen("/proc/self/status", "r") {
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, 256, f) != nil {
            let s = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if s.hasPrefix("VmRSS:") || s.hasPrefix("RssAnon:") || s.hasPrefix("RssFile:") { rss += s.filter { $0 != "\t" && $0 != " " } }
        }
        fclose(f)
    }
    let text = """
        end=\(end)
        start_to_first_entry_us=\(ms(machine.timeToFirstEntry.map { $0 + machine.created - start }))
        start_to_end_us=\(ms(machine.ended.map { $0 - start }))
        populate_us=\(ms(machine.memory.populateSeconds))
        report_monotonic_us=\(ms(Clock.now()))
        vcpu_tids=\(machine.vcpuThreadIDs.map(String.init).joined(separator: ","))
        \(rss)
        """
    writeAtomically(text + "\n", to: reportPath)
}
switch end {
case .exited(let s): exit(Int32(min(s, 255)))
case .reset, .shutdown:
    say("the guest \(end)")
    exit(0)
case .failed:
    fail("the guest \(end)")
}
