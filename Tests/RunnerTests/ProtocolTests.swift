// The agent protocol's host side, byte for byte: encoding, decoding, resynchronisation after garbage.

import Testing
@testable import Runner

@Suite struct ProtocolTests {
    @Test func roundTripsEveryFrameThroughTheDecoder() {
        let frames = [
            AgentCodec.hello(nonce: 0x0102_0304_0506_0708),
            AgentCodec.exec(ExecRequest(argv: ["echo", "hé"], env: ["A=1"], cwd: "/tmp", uid: 1000, gid: 100, groups: [5, 6]), session: 7),
            AgentFrame(.stdin, session: 7, payload: Array(repeating: 0xab, count: 70_000)),
            AgentCodec.signal(15, session: 7),
            AgentFrame(.stdin, session: 7),
        ]
        var d = AgentFrameDecoder()
        for f in frames { d.feed(f.encoded) }
        var out: [AgentFrame] = []
        while let f = d.next() { out.append(f) }
        #expect(out == frames)
        #expect(d.skipped == 0)
    }

    @Test func headerLayoutIsTheOneInProtocolH() {
        let f = AgentFrame(.stdout, session: 0x0A0B_0C0D, payload: [1, 2, 3])
        #expect(f.encoded == [0x53, 0x56, 0x83, 0x00, 0x0D, 0x0C, 0x0B, 0x0A, 3, 0, 0, 0, 1, 2, 3])
    }

    @Test func byteAtATimeFeedingGivesTheSameFrames() {
        let f = AgentCodec.exec(ExecRequest(argv: ["true"], env: []), session: 3)
        var d = AgentFrameDecoder()
        var got: [AgentFrame] = []
        for b in f.encoded + f.encoded { d.feed([b]); while let x = d.next() { got.append(x) } }
        #expect(got == [f, f])
    }

    @Test func garbageBeforeAndBetweenFramesIsSkipped() {
        let a = AgentFrame(.stdout, session: 1, payload: Array("hello".utf8))
        let b = AgentFrame(.exit, session: 1, payload: [0, 0, 0, 0, 0, 0, 0, 0])
        var d = AgentFrameDecoder()
        // A stale half frame, noise containing a magic with an impossible length, then real frames.
        d.feed(Array(a.encoded.prefix(7)) + [0x53, 0x56, 0x83, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f] + a.encoded + [9, 9] + b.encoded)
        var got: [AgentFrame] = []
        while let x = d.next() { got.append(x) }
        #expect(got.suffix(2) == [a, b])
    }

    @Test func readyAndExitPayloadsDecode() {
        var p = [UInt8]()
        p.appendLE(UInt64(42)); p.appendLE(UInt64(1500)); p.appendLE(UInt32(4)); p.appendLE(UInt64(262_144))
        p.appendString("guest-1"); p.appendString("6.1.0"); p.appendString("1")
        let info = AgentCodec.ready(AgentFrame(.ready, payload: p))
        #expect(
            info == GuestInfo(nonce: 42, uptimeMs: 1500, cpus: 4, memoryKB: 262_144, hostname: "guest-1", kernelRelease: "6.1.0", agentVersion: "1"))
        #expect(AgentCodec.ready(AgentFrame(.ready, payload: Array(p.prefix(20)))) == nil)
        var e = [UInt8](); e.appendLE(UInt32(bitPattern: -1)); e.appendLE(UInt32(9))
        #expect(AgentCodec.exit(AgentFrame(.exit, payload: e)) == CommandStatus(exitCode: nil, signal: 9))
        #expect(AgentCodec.exit(AgentFrame(.exit, payload: e))?.code == 137)
    }
}
