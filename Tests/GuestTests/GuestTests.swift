// Real guests: the minimal image built from Debian packages, booted under QEMU (TCG on these hosts),
// commands through the agent, pinning read back from /proc, and every kind of bad input.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// One parent so that every guest test runs alone: they share the CPUs, the catalog and the run directory.
@Suite(.serialized, .enabled(if: Harness.canBoot, "SKIPPED: qemu-system-x86_64 is not installed"))
struct Guests {

    @Suite struct GuestTests {
        init() { _ = Harness.minimal }

        @Test func buildIsReproducibleSmallAndDescribed() throws {
            let again = Harness.run(["image", "build", Harness.repo + "/Images/minimal.toml", "--version", "repro", "--json"])
            #expect(again.code == 0, "\(again.err)")
            let show = Harness.run(["image", "show", "minimal:1.3", "--json"])
            let a = try JSONSerialization.jsonObject(with: Data(show.out.utf8)) as! [String: Any]
            let b = try JSONSerialization.jsonObject(with: Data(again.out.utf8)) as! [String: Any]
            #expect(a["digest"] as? String == b["digest"] as? String, "same recipe, same packages: same bytes")
            #expect((a["size_bytes"] as! Int) <= 30 << 20, "minimal must stay within 30 MB")
            let ad = a["ad"] as! String
            for attr in [
                "Name = \"minimal\"", "OS = \"debian\"", "OSVersion = ", "KernelVersion = ", "KernelRelease = ", "Arch = \"x86_64\"",
                "\"busybox-static\"", "MaxVCPUs = 64", "MinMemoryMB = ", "SizeMB = ", "Requirements = true", "Rank = 0",
            ] {
                #expect(ad.contains(attr), "ad lacks \(attr): \(ad)")
            }
            #expect(Harness.run(["image", "rm", "minimal:repro"]).code == 0)
        }

        @Test(arguments: Harness.backends) func commandsRunAndReturnTheirExitCodes(backend: String) {
            let ok = Harness.run([
                "vm", "run", "--backend", backend, "--image", "minimal", "--", "sh", "-c", "echo out; echo err >&2; uname -r; exit 7",
            ])
            #expect(ok.code == 7)
            #expect(ok.out.hasPrefix("out\n6.1."), "\(ok.out)")
            #expect(ok.err.contains("err"))
            let missing = Harness.run(["vm", "run", "--backend", backend, "--image", "minimal", "--", "no-such-program"])
            #expect(missing.code == 127)
            #expect(missing.err.contains("no-such-program: command not found"))
            let stdin = Harness.run(
                ["vm", "run", "--backend", backend, "--image", "minimal", "--", "sh", "-c", "tr a-z A-Z"], stdin: Data("hello guest\n".utf8))
            #expect(stdin.out == "HELLO GUEST\n")
            Harness.expectClean()
        }

        @Test(arguments: Harness.backends) func tenMegabytesOfOutputArriveIntact(backend: String) {
            let r = Harness.run([
                "vm", "run", "--backend", backend, "--image", "minimal", "--mem", "192M", "--", "sh", "-c",
                "dd if=/dev/urandom of=/tmp/x bs=1048576 count=10 2>/dev/null; sha256sum /tmp/x >&2; cat /tmp/x",
            ])
            #expect(r.code == 0, "\(r.err)")
            #expect(r.outBytes.count == 10 << 20)
            let got = Harness.sh("printf '' >/dev/null")  // keep sh warm-up out of the digest
            _ = got
            let f = Harness.root + "/out.bin"
            try? r.outBytes.write(to: URL(fileURLWithPath: f))
            let host = Harness.sh("sha256sum \(f)").1.split(separator: " ").first.map(String.init)
            let guest = r.err.split(separator: " ").first.map(String.init)
            #expect(host != nil && host == guest)
            Harness.expectClean()
        }

        @Test(.enabled(if: Harness.cpuCount >= 2, "SKIPPED: needs 2 CPUs to pin 2 vCPUs apart"), arguments: Harness.backends)
        func severalGuestsPrefixTheirOutput(backend: String) {
            let r = Harness.run(
                ["vm", "run", "--backend", backend, "--image", "minimal", "--count", "2", "--cpus", "0,1", "--", "sh", "-c", "hostname; exit 3"])
            #expect(r.code == 3)
            let lines = r.out.split(separator: "\n")
            #expect(lines.count == 2)
            let hosts = Set(lines.map { String($0.split(separator: ":").first ?? "") })
            #expect(hosts.count == 2)
            for l in lines { let p = l.split(separator: ":").map { $0.trimmingCharacters(in: .whitespaces) }; #expect(p.count == 2 && p[0] == p[1]) }
            Harness.expectClean()
        }

        @Test(.enabled(if: Harness.cpuCount >= 2, "SKIPPED: needs 2 CPUs to pin 2 vCPUs apart"), arguments: Harness.backends)
        func eachVCPUThreadIsPinnedToItsOwnCPU(backend: String) throws {
            let keep = Harness.run(["vm", "run", "--backend", backend, "--image", "minimal", "--vcpus", "2", "--cpus", "0,1", "--keep"])
            #expect(keep.code == 0, "\(keep.err)")
            let id = keep.out.trimmingCharacters(in: .whitespacesAndNewlines)
            let g = try #require(Harness.guests().first { $0["id"] as? String == id })
            let pid = g["pid"] as! Int
            let tids = g["vcpu_threads"] as! [Int]
            let cpus = g["cpus"] as! [Int]
            let hk = Set(g["housekeeping"] as! [Int])
            #expect(tids.count == 2 && Set(tids).count == 2)
            for (i, t) in tids.enumerated() { #expect(Harness.affinity(pid: pid, tid: t) == String(cpus[i]), "vCPU \(i) thread \(t)") }
            // Every other VMM thread stays on the housekeeping CPUs (QEMU's may use them all, the
            // embedded VMM pins its I/O thread to one of them).
            let all = (try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")).compactMap { Int($0) }
            for t in all where !tids.contains(t) {
                let a = Harness.affinity(pid: pid, tid: t)
                let on = Harness.cpuList(a ?? "")
                #expect(!on.isEmpty && on.isSubset(of: hk), "thread \(t) on \(a ?? "?"), housekeeping \(hk.sorted())")
            }
            if backend == "embedded" {
                // Every thread of the running VMM is confined: a uid and gid of its own (not root, not
                // ours), no capabilities, no_new_privs and the seccomp filter.
                for t in all {
                    let status = (try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/status", encoding: .utf8)) ?? ""
                    let fields = Dictionary(
                        status.split(separator: "\n").map { l in
                            (String(l.prefix { $0 != ":" }), l.drop { $0 != ":" }.dropFirst().trimmingCharacters(in: .whitespaces))
                        }, uniquingKeysWith: { a, _ in a })
                    #expect(fields["NoNewPrivs"] == "1" && fields["Seccomp"] == "2", "thread \(t): \(status)")
                    let uids = (fields["Uid"] ?? "").split(whereSeparator: \.isWhitespace).compactMap { UInt32($0) }
                    let gids = (fields["Gid"] ?? "").split(whereSeparator: \.isWhitespace).compactMap { UInt32($0) }
                    #expect(uids.count == 4 && Set(uids).count == 1 && uids[0] >= 4_200_000_000, "thread \(t): Uid \(uids)")
                    #expect(gids == uids, "thread \(t): Gid \(gids)")
                    #expect(fields["CapEff"] == "0000000000000000" && fields["CapPrm"] == "0000000000000000", "thread \(t): \(status)")
                    #expect(fields["Groups"] == "", "thread \(t): no supplementary groups")
                }
            }
            let exec = Harness.run(["vm", "exec", id, "--", "nproc"])
            #expect(exec.code == 0 && exec.out == "2\n", "\(exec.err)")
            #expect(Harness.run(["vm", "exec", id, "--", "sh", "-c", "exit 5"]).code == 5)
            // -it: a shell on a terminal of the caller's size, in the guest.
            let term = Harness.runOnTerminal(["vm", "exec", "-it", id, "--", "sh"], keys: "tty; stty size; exit 4\n")
            #expect(term.code == 4, "\(term.shown)")
            #expect(term.shown.contains("33 97") && term.shown.contains("/dev/pts/"), "\(term.shown)")
            // An image in use cannot be removed.
            let rm = Harness.run(["image", "rm", "minimal:1.3"])
            #expect(rm.code == 1 && rm.err.contains("in use by \(id)"), "\(rm.err)")
            #expect(Harness.run(["vm", "stop", id]).code == 0)
            Harness.expectClean()
        }

        /// `vm run --network`: the guests share a private segment (a bridge and a tap each on this host),
        /// their NICs configured by the agent with the segment's MTU, every guest named in /etc/hosts;
        /// the bridge and taps go with the guests (with --keep, with the last one `vm stop` ends).
        @Test(.enabled(if: getuid() == 0, "SKIPPED: --network makes a bridge and taps: needs root"), arguments: Harness.backends)
        func guestsOnAPrivateNetworkReachEachOtherByName(backend: String) throws {
            let probe =
                "ip -o link | grep -o 'mtu [0-9]*' | sort -u | tr '\\n' ' '; echo; for h in $(grep -v localhost /etc/hosts | cut -d' ' -f2); do ping -c1 -W5 $h >/dev/null && echo \"reached $h\"; done; echo hostfile $(wc -l < /etc/slurm-vm/hostfile)"
            let r = Harness.run(["vm", "run", "--backend", backend, "--image", "minimal", "--count", "2", "--network", "--", "sh", "-c", probe])
            #expect(r.code == 0, "\(r.err)")
            let names = Set(r.out.split(separator: "\n").compactMap { $0.split(separator: ":").first.map(String.init) })
            #expect(names.count == 2, "\(r.out)")
            for a in names { for b in names { #expect(r.out.contains("\(a): reached \(b)"), "\(r.out)") } }
            #expect(r.out.contains("mtu 1450"), "\(r.out)")
            for a in names { #expect(r.out.contains("\(a): hostfile 2"), "\(r.out)") }
            #expect(!Harness.sh("ip -o link").1.contains(": svm"), "the run's bridge or taps outlived it")
            // Kept guests keep their network until the last of them stops.
            let keep = Harness.run(["vm", "run", "--backend", backend, "--image", "minimal", "--count", "2", "--network", "--keep"])
            #expect(keep.code == 0, "\(keep.err)")
            #expect(Harness.sh("ip -o link").1.contains(": svm"))
            #expect(Harness.run(["vm", "stop", "--all"]).code == 0)
            #expect(!Harness.sh("ip -o link").1.contains(": svm"), "vm stop left the network behind")
            Harness.expectClean()
        }

        /// Two separate invocations at once, each on its own CPU. They keep their guests, so that both are
        /// seen running together however slowly each boots (a 2-core CI machine under TCG can take seconds).
        @Test(.enabled(if: Harness.cpuCount >= 2, "SKIPPED: needs 2 CPUs to pin 2 vCPUs apart"), arguments: Harness.backends)
        func twoRunsOnDisjointCPUsAtOnce(backend: String) throws {
            final class Out: @unchecked Sendable { var r: [Harness.Result?] = [nil, nil] }
            let o = Out()
            DispatchQueue.concurrentPerform(iterations: 2) { i in
                o.r[i] = Harness.run(["vm", "run", "--backend", backend, "--image", "minimal", "--cpus", String(i), "--keep"])
            }
            let ids = (0..<2).map { o.r[$0]?.out.trimmingCharacters(in: .whitespacesAndNewlines) ?? "" }
            #expect(o.r[0]?.code == 0 && o.r[1]?.code == 0, "\(o.r[0]?.err ?? "") \(o.r[1]?.err ?? "")")
            let seen = Harness.guests().filter { ids.contains($0["id"] as? String ?? "") }
            #expect(seen.count == 2, "both guests are running at once")
            let cpuSets = seen.map { Set($0["cpus"] as! [Int]) }
            if cpuSets.count == 2 { #expect(cpuSets[0].isDisjoint(with: cpuSets[1])) }
            for g in seen {
                let pid = g["pid"] as! Int, tid = (g["vcpu_threads"] as! [Int])[0], cpu = (g["cpus"] as! [Int])[0]
                #expect(Harness.affinity(pid: pid, tid: tid) == String(cpu))
            }
            for (i, id) in ids.enumerated() where !id.isEmpty {
                let r = Harness.run(["vm", "exec", id, "--", "sh", "-c", "echo guest\(i)"])
                #expect(r.code == 0 && r.out == "guest\(i)\n", "\(r.err)")
                #expect(Harness.run(["vm", "stop", id]).code == 0)
            }
            Harness.expectClean()
        }

        /// A host directory shared with --share (virtio-fs; on the embedded VMM a vhost-user front end to
        /// the same virtiofsd): the guest reads what the host wrote, the host reads what the guest
        /// wrote, 8 MiB arrive intact, and no file server is left.
        @Test(.enabled(if: getuid() == 0, "SKIPPED: --share starts virtiofsd: needs root"), arguments: Harness.backends)
        func aSharedDirectoryIsReadAndWrittenFromTheGuest(backend: String) throws {
            let dir = Harness.root + "/share-\(backend)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try Data("from the host\n".utf8).write(to: URL(fileURLWithPath: dir + "/in.txt"))
            let r = Harness.run([
                "vm", "run", "--backend", backend, "--image", "minimal", "--vcpus", Harness.cpuCount >= 2 ? "2" : "1", "--share", dir, "--", "sh",
                "-c",
                "cat \(dir)/in.txt; echo from the guest > \(dir)/out.txt; dd if=/dev/urandom of=\(dir)/big bs=1048576 count=8 2>/dev/null; sha256sum \(dir)/big",
            ])
            #expect(r.code == 0, "\(r.err)")
            #expect(r.out.hasPrefix("from the host\n"), "\(r.out)")
            #expect((try? String(contentsOfFile: dir + "/out.txt", encoding: .utf8)) == "from the guest\n")
            let host = Harness.sh("sha256sum \(dir)/big").1.split(separator: " ").first.map(String.init)
            let guest = r.out.split(separator: "\n").last?.split(separator: " ").first.map(String.init)
            #expect(host != nil && host == guest, "the guest wrote \(guest ?? "nothing"), the host reads \(host ?? "nothing")")
            Harness.expectClean()
            try? FileManager.default.removeItem(atPath: dir)
        }

        /// A guest that writes its console without end fills no disk: the log stops at its limit (the
        /// embedded VMM says so in it), and the guest goes on.
        @Test(arguments: Harness.backends) func anEndlessConsoleIsCutOffAtItsLimit(backend: String) throws {
            let r = Harness.run([
                "vm", "run", "--backend", backend, "--image", "minimal", "--keep", "--console-limit", "64K", "--", "sh", "-c",
                "head -c 200000 /dev/zero | tr '\\0' x > /dev/console; echo written",
            ])
            #expect(r.code == 0 && r.out.contains("written"), "\(r.err)")
            guard let id = Harness.guests().first?["id"] as? String else {
                Issue.record("the kept guest is not listed")
                return
            }
            defer { _ = Harness.run(["vm", "stop", id]); Harness.expectClean() }
            let log = Harness.runDir + "/guests/\(id)/console.log"
            let size = (try? FileManager.default.attributesOfItem(atPath: log)[.size] as? Int) ?? -1
            #expect(size > 32 << 10 && size <= 64 << 10, "console log of \(size) bytes")
            if backend == "embedded" {
                #expect((try? String(contentsOfFile: log, encoding: .utf8))?.hasSuffix("the guest wrote more]\n") == true)
            }
            #expect(Harness.run(["vm", "exec", id, "--", "echo", "alive"]).out == "alive\n")
        }

        @Test(arguments: Harness.backends) func ctrlCTearsEverythingDown(backend: String) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Harness.binary)
            p.arguments = ["vm", "run", "--backend", backend, "--image", "minimal", "--", "sleep", "60"]
            var e = ProcessInfo.processInfo.environment
            e["SLURM_VM_CATALOG"] = Harness.catalog; e["SLURM_VM_RUNDIR"] = Harness.runDir
            p.environment = e
            p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
            try p.run()
            var up = false
            for _ in 0..<300 where !up { up = !Harness.guests().isEmpty; usleep(50_000) }
            #expect(up)
            usleep(1_500_000)  // let the command start in the guest
            kill(p.processIdentifier, SIGINT)
            p.waitUntilExit()
            #expect(p.terminationStatus == 128 + SIGINT)
            Harness.expectClean()
        }

        @Test func rawModeCopiesTheConsoleAndEndsWithTheGuest() throws {
            let rec =
                try JSONSerialization.jsonObject(with: Data(Harness.run(["image", "show", "minimal:1.3", "--json"]).out.utf8)) as! [String: Any]
            func blob(_ role: String) -> String {
                let d = (rec["artefacts"] as! [[String: Any]]).first { $0["role"] as? String == role }!["digest"] as! String
                return Harness.catalog + "/blobs/sha256/" + d.dropFirst(7)
            }
            // The image's own kernel and initramfs, booted without an agent: the agent's boot-only mode
            // reports on the console and powers off, which ends the run.
            let r = Harness.run([
                "vm", "run", "--kernel", blob("kernel"), "--initrd", blob("initrd"), "--vcpus", "1", "--mem", "128M",
                "--append", "slurmvm.bootonly=1",
            ])
            #expect(r.code == 0, "\(r.err)")
            #expect(r.out.contains("boot-only: user space reached at"), "\(r.out)")
            #expect(r.err.contains("guest powered off"))
            // A guest that halts without powering off also ends the run.
            let h = Harness.run([
                "vm", "run", "--kernel", blob("kernel"), "--initrd", blob("initrd"), "--mem", "128M",
                "--append", "rdinit=/usr/bin/busybox -- halt -f",
            ])
            #expect(h.code == 0, "\(h.err)")
            #expect(h.err.contains("guest halted") || h.err.contains("guest powered off"), "\(h.err)")
            Harness.expectClean()
        }

        /// The image on our own VMM: Linux boots, finds the virtio-pci console, and the agent runs the
        /// command. Where KVM has hardware virtualization: on hosts whose KVM is PVM (these CI machines)
        /// a Linux guest cannot reach user space, and this runs in the SVM sandbox stage instead.
        @Test(arguments: Harness.embeddedOnly)
        func theEmbeddedVMMBootsTheMinimalImage(backend: String) throws {
            let r = Harness.run(["vm", "run", "--backend", backend, "--image", "minimal", "--verbose", "--", "uname", "-a"], timeout: 120)
            #expect(r.code == 0, "\(r.err)")
            #expect(r.out.hasPrefix("Linux ") && r.out.contains(" 6.1."), "\(r.out)")
            #expect(r.err.contains("backend embedded"), "\(r.err)")
            Harness.expectClean()
        }

        @Test(
            .enabled(if: getuid() == 0, "SKIPPED: only root can switch to an unprivileged user to try"),
            .enabled(if: Harness.sh("command -v runuser").0 == 0, "SKIPPED: runuser(1) is missing"))
        func theBuilderNeedsNoRoot() throws {
            let dir = Harness.root + "/nobody"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            chown(dir, 65534, 65534)
            chmod(Harness.root, 0o755)
            let cmd =
                "cd \(dir) && runuser -u nobody -- env HOME=\(dir) XDG_CACHE_HOME=\(dir)/cache SLURM_VM_CATALOG=\(dir)/catalog "
                + "\(Harness.binary) image build \(Harness.repo)/Images/minimal.toml --json"
            let (st, out) = Harness.sh(cmd)
            #expect(st == 0, "\(out)")
            let mine =
                try JSONSerialization.jsonObject(with: Data(Harness.run(["image", "show", "minimal:1.3", "--json"]).out.utf8)) as! [String: Any]
            #expect(out.contains(mine["digest"] as! String), "an unprivileged build gives the same image: \(out)")
        }

        @Test func matchIsADryRunOfSubmission() {
            let hit = Harness.run(["match", "--vm-libs", "busybox-static", "--vm-vcpus", "2", "--vm-os", "debian:12"])
            #expect(hit.code == 0 && hit.out.hasPrefix("minimal:"), "\(hit.out)\(hit.err)")
            let miss = Harness.run(["match", "--vm-libs", "openmpi"])
            #expect(miss.code == 1)
            #expect(
                miss.out.contains("no guest image matches this request") && miss.out.contains("member(\"openmpi\",TARGET.Libraries)"), "\(miss.out)")
            for bad in [
                ["--vm-count", "x"], ["--vm-vcpus", "0"], ["--vm-image", "../x"], ["--vm-requirements", "TARGET.Foo =="], ["--vm-mem", "lots"],
            ] {
                let r = Harness.run(["match"] + bad)
                #expect(r.code == 2, "\(bad): \(r.err)")
                #expect(r.err.contains(bad[0]), "\(bad): \(r.err)")
            }
            // An admin restricts the image to another account: this user no longer matches, with the reason.
            #expect(Harness.run(["image", "set", "minimal:1.3", "Requirements=TARGET.Account == \"physics\""]).code == 0)
            let denied = Harness.run(["match", "--vm-image", "minimal", "--account", "chemistry"])
            #expect(denied.code == 1 && denied.out.contains("TARGET.Account == \"physics\""), "\(denied.out)")
            #expect(Harness.run(["match", "--vm-image", "minimal", "--account", "physics"]).code == 0)
            #expect(Harness.run(["image", "set", "minimal:1.3", "--unset", "Requirements"]).code == 0)
            #expect(Harness.run(["image", "set", "minimal:1.3", "Requirements=TARGET.Owner =="]).code == 2)
        }
    }

    @Suite struct BadInputTests {
        init() { _ = Harness.minimal }

        func expectFailure(
            _ args: [String], code: Int32 = 1, says: String, env: [String: String] = [:], catalog: String? = nil,
            _ loc: SourceLocation = #_sourceLocation
        ) {
            let r = Harness.run(args, env: env, catalog: catalog)
            #expect(r.code == code, "\(args): exit \(r.code): \(r.err)", sourceLocation: loc)
            #expect(r.err.contains(says), "\(args): wanted '\(says)' in: \(r.err)", sourceLocation: loc)
            Harness.expectClean(loc)
        }

        @Test func eachMistakeGetsAClearMessageAndLeavesNothingRunning() {
            expectFailure(["vm", "run", "--image", "nope", "--", "true"], says: "no image 'nope' in the catalog; known images: minimal:1.3")
            expectFailure(
                ["vm", "run", "--image", "minimal", "--vcpus", "2", "--cpus", "0", "--", "true"], code: 2, says: "need 2 CPUs, but --cpus gives 1")
            expectFailure(
                ["vm", "run", "--image", "minimal", "--cpus", String(Harness.cpuCount + 3), "--", "true"], code: 2,
                says: "outside this process's CPU affinity")
            expectFailure(["vm", "run", "--image", "minimal", "--mem", "64M", "--", "true"], code: 2, says: "below image minimal:1.3's minimum")
            expectFailure(["vm", "run", "--image", "minimal", "--vcpus", "65", "--cpus", "0", "--", "true"], code: 2, says: "MaxVCPUs = 64")
            expectFailure(
                ["vm", "run", "--image", "minimal", "--", "true"], says: "QEMU (/nonexistent/qemu) is not installed",
                env: ["SLURM_VM_QEMU": "/nonexistent/qemu"])
            expectFailure(["vm", "run", "--image", "../../etc", "--", "true"], code: 2, says: "may contain only letters")
        }

        @Test func aRecipeNamingAMissingPackageFailsWithoutAHalfImage() throws {
            let dir = Harness.root + "/recipes"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try FileManager.default.removeItem(atPath: dir)
            try FileManager.default.copyItem(atPath: Harness.repo + "/Images", toPath: dir)
            let text = try String(contentsOfFile: dir + "/minimal.toml", encoding: .utf8)
                .replacingOccurrences(of: "include = [\"busybox-static\"]", with: "include = [\"busybox-static\", \"no-such-package-slurmvm\"]")
                .replacingOccurrences(of: "name = \"minimal\"", with: "name = \"broken\"")
            try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/broken.toml"))
            let before = Harness.run(["image", "list", "--json"]).out
            expectFailure(["image", "build", dir + "/broken.toml"], says: "no-such-package-slurmvm")
            #expect(Harness.run(["image", "list", "--json"]).out == before)
            let tmp = (try? FileManager.default.contentsOfDirectory(atPath: Harness.catalog + "/tmp")) ?? []
            #expect(tmp.isEmpty, "build leftovers: \(tmp)")
        }

        @Test func aCorruptedBlobIsNeverBooted() throws {
            let copy = Harness.root + "/corrupt-catalog"
            try? FileManager.default.removeItem(atPath: copy)
            try FileManager.default.copyItem(atPath: Harness.catalog, toPath: copy)
            let show = Harness.run(["image", "show", "minimal:1.3", "--json"], catalog: copy)
            let rec = try JSONSerialization.jsonObject(with: Data(show.out.utf8)) as! [String: Any]
            let initrd = (rec["artefacts"] as! [[String: Any]]).first { $0["role"] as? String == "initrd" }!["digest"] as! String
            let blob = copy + "/blobs/sha256/" + initrd.dropFirst(7)
            chmod(blob, 0o644)
            let h = FileHandle(forUpdatingAtPath: blob)!
            h.seek(toFileOffset: 1000); h.write(Data([0x42, 0x42])); try h.close()
            expectFailure(["vm", "run", "--image", "minimal", "--", "true"], says: "no longer matches its digest", catalog: copy)
            let v = Harness.run(["image", "verify"], catalog: copy)
            #expect(v.code == 1 && v.out.contains("FAILED  minimal:1.3 initrd"))
        }

        @Test func aGuestThatNeverBecomesReadyTimesOutShowingItsConsole() throws {
            // A kernel whose /init never starts an agent: the real kernel, and an init that only sleeps.
            let dir = Harness.root + "/silent"
            try FileManager.default.createDirectory(atPath: dir + "/root", withIntermediateDirectories: true)
            try Data("int main(void){ for(;;) { extern int pause(void); pause(); } }\n".utf8).write(to: URL(fileURLWithPath: dir + "/init.c"))
            #expect(Harness.sh("cc -static -O1 -o \(dir)/root/init \(dir)/init.c").0 == 0)
            #expect(Harness.sh("cd \(dir)/root && echo init | cpio -o -H newc > ../initrd 2>/dev/null").0 == 0)
            let show = Harness.run(["image", "show", "minimal:1.3", "--json"])
            let rec = try JSONSerialization.jsonObject(with: Data(show.out.utf8)) as! [String: Any]
            let kernel = (rec["artefacts"] as! [[String: Any]]).first { $0["role"] as? String == "kernel" }!["digest"] as! String
            let add = Harness.run([
                "image", "add", "silent:1", "--kernel", Harness.catalog + "/blobs/sha256/" + kernel.dropFirst(7),
                "--initrd", dir + "/initrd", "--attr", "MinMemoryMB=128", "--attr", "OS=\"debian\"",
            ])
            #expect(add.code == 0, "\(add.err)")
            expectFailure(["vm", "run", "--image", "silent", "--boot-timeout", "10", "--", "true"], says: "did not become ready within 10 s")
            let r = Harness.run(["vm", "run", "--image", "silent", "--boot-timeout", "10", "--", "true"])
            #expect(r.err.contains("last lines of the guest console") && r.err.contains("Linux version") || r.err.contains("| "), "\(r.err)")
            #expect(Harness.run(["image", "rm", "silent:1"]).code == 0)
            Harness.expectClean()
        }
    }

    @Suite(.enabled(if: ProcessInfo.processInfo.environment["SLURM_VM_SKIP_MPI"] == nil, "SKIPPED: MPI image test (SLURM_VM_SKIP_MPI is set)"))
    struct MPIImageTests {
        @Test(.enabled(if: Harness.cpuCount >= 2, "SKIPPED: needs 2 CPUs to pin 2 vCPUs apart"), arguments: Harness.backends)
        func mpiexecRunsInsideOneGuest(backend: String) throws {
            if Harness.sharedCatalog == nil {
                let b = Harness.run(["image", "build", Harness.repo + "/Images/mpich.toml", "--json"], timeout: 1800)
                #expect(b.code == 0, "\(b.err)")
            }
            let rec = try JSONSerialization.jsonObject(with: Data(Harness.run(["image", "show", "mpich", "--json"]).out.utf8)) as! [String: Any]
            #expect((rec["size_bytes"] as! Int) <= 80 << 20, "the MPI image must stay within 80 MB")
            #expect((rec["ad"] as! String).contains("\"mpich\""))
            let r = Harness.run([
                "vm", "run", "--backend", backend, "--image", "mpich", "--vcpus", "2", "--cpus", "0,1", "--", "mpiexec", "-n", "2", "hostname",
            ])
            #expect(r.code == 0, "\(r.err)")
            let lines = r.out.split(separator: "\n")
            #expect(lines.count == 2 && Set(lines).count == 1 && lines[0].hasPrefix("mpich-"), "\(r.out)")
            let m = Harness.run(["match", "--vm-libs", "mpich,fftw3"])
            #expect(m.code == 0 && m.out.hasPrefix("mpich:1.3"), "\(m.out)")
            Harness.expectClean()
        }
    }
}
