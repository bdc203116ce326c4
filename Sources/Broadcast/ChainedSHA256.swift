// SHA-256 that can stop at a block boundary, say what its chaining value is there, and be resumed from
// it (CSHA256). The manifest records the chain at each chunk boundary: a chunk is checked on arrival by
// hashing it from the value before it and comparing with the value after it, and the last chunk's
// check yields the image's digest itself. When every chunk has passed, the chain from SHA-256's initial
// value to the catalog digest has been computed over exactly the bytes received: the whole image is
// verified without hashing any byte twice.

import CSHA256
import Foundation

struct ChainedSHA256 {
    private var ctx = csha256_ctx()

    init() { csha256_init(&ctx) }

    /// Continues from `state`, the chaining value after the first `length` bytes (a multiple of 64).
    init?(resuming state: Data, at length: Int64) {
        guard state.count == 32, length >= 0 else { return nil }
        let rc = state.withUnsafeBytes { csha256_resume(&ctx, $0.bindMemory(to: UInt8.self).baseAddress, UInt64(length)) }
        guard rc == 0 else { return nil }
    }

    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        csha256_update(&ctx, bytes.baseAddress, bytes.count)
    }

    /// The chaining value; nil unless a whole number of 64-byte blocks has been hashed.
    func state() -> Data? {
        var c = ctx
        var out = Data(count: 32)
        let rc = out.withUnsafeMutableBytes { csha256_state(&c, $0.bindMemory(to: UInt8.self).baseAddress) }
        return rc == 0 ? out : nil
    }

    /// The digest of everything hashed (from the start of the chain).
    func finalize() -> Data {
        var c = ctx
        var out = Data(count: 32)
        out.withUnsafeMutableBytes { csha256_final(&c, $0.bindMemory(to: UInt8.self).baseAddress) }
        return out
    }

    static var usesSHAExtensions: Bool { csha256_uses_sha_extensions() != 0 }
}
