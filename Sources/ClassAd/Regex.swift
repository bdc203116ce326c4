// Regular expressions through PCRE2, the engine HTCondor uses, with compiled patterns cached.

import CPCRE2
import Foundation

final class CompiledRegex: @unchecked Sendable {
    let code: OpaquePointer
    let captureCount: Int
    init(code: OpaquePointer, captureCount: Int) { self.code = code; self.captureCount = captureCount }
    deinit { pcre2_code_free_8(code) }
}

enum RegexEngine {
    struct Key: Hashable { let pattern: [UInt8]; let options: UInt32 }
    /// Per-thread cache: the matchmaker evaluates the same few patterns millions of times.
    nonisolated(unsafe) static var cacheKey: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k) { p in if let p { Unmanaged<Box>.fromOpaque(p).release() } }
        return k
    }()
    final class Box { var map: [Key: CompiledRegex?] = [:] }

    static var cache: Box {
        if let p = pthread_getspecific(cacheKey) { return Unmanaged<Box>.fromOpaque(p).takeUnretainedValue() }
        let b = Box()
        pthread_setspecific(cacheKey, Unmanaged.passRetained(b).toOpaque())
        return b
    }

    /// Options letters as HTCondor reads them: i (caseless), m (multiline), s (dotall), x (extended).
    /// PCRE2 options from HTCondor's option letters: lower-case only for regexp() and its kin, which
    /// ignore "I", "M", …; either case for stringList_regexpMember (`anyCase`), which reads them
    /// differently (both measured against HTCondor's library).
    static func options(_ s: [UInt8], anyCase: Bool = false) -> UInt32 {
        var o: UInt32 = 0
        for c in s {
            switch anyCase ? Bytes.lowerASCII(c) : c {
            case UInt8(ascii: "i"): o |= UInt32(PCRE2_CASELESS)
            case UInt8(ascii: "m"): o |= UInt32(PCRE2_MULTILINE)
            case UInt8(ascii: "s"): o |= UInt32(PCRE2_DOTALL)
            case UInt8(ascii: "x"): o |= UInt32(PCRE2_EXTENDED)
            default: break
            }
        }
        return o
    }

    static func compile(_ pattern: [UInt8], _ options: UInt32) -> CompiledRegex? {
        let key = Key(pattern: pattern, options: options)
        let box = cache
        if let hit = box.map[key] { return hit }
        var err: Int32 = 0
        var off: Int = 0
        let code = pattern.withUnsafeBufferPointer { p in
            pcre2_compile_8(p.baseAddress, p.count, options, &err, &off, nil)
        }
        var result: CompiledRegex? = nil
        if let code {
            var n: UInt32 = 0
            pcre2_pattern_info_8(code, UInt32(PCRE2_INFO_CAPTURECOUNT), &n)
            result = CompiledRegex(code: code, captureCount: Int(n))
        }
        if box.map.count > 4096 { box.map.removeAll() }
        box.map[key] = result
        return result
    }

    /// Does `pattern` match anywhere in `target`? nil: the pattern does not compile.
    static func matches(_ pattern: [UInt8], _ target: [UInt8], options: UInt32) -> Bool? {
        guard let re = compile(pattern, options) else { return nil }
        let md = pcre2_match_data_create_from_pattern_8(re.code, nil)
        defer { pcre2_match_data_free_8(md) }
        let rc = target.withUnsafeBufferPointer { t in
            pcre2_match_8(re.code, t.baseAddress ?? UnsafePointer(bitPattern: 1), t.count, 0, 0, md, nil)
        }
        if rc >= 0 { return true }
        if rc == PCRE2_ERROR_NOMATCH { return false }
        return nil
    }

    /// HTCondor's regexps()/replace()/replaceAll(): `fullTarget` keeps the unmatched text, `global` replaces every
    /// match. In the replacement, \0..\9 name capture groups. nil: a bad pattern or group reference.
    static func substitute(
        _ pattern: [UInt8], _ target: [UInt8], _ replacement: [UInt8], options: UInt32,
        fullTarget: Bool, global: Bool
    ) -> [UInt8]? {
        guard let re = compile(pattern, options) else { return nil }
        let md = pcre2_match_data_create_from_pattern_8(re.code, nil)
        defer { pcre2_match_data_free_8(md) }
        var out: [UInt8] = []
        var idx = 0
        var emptyMatch = false
        var status: Int32 = 0
        repeat {
            let extra: UInt32 = emptyMatch ? (PCRE2_NOTEMPTY_ATSTART | PCRE2_ANCHORED) : 0
            status = target.withUnsafeBufferPointer { t in
                pcre2_match_8(re.code, t.baseAddress ?? UnsafePointer(bitPattern: 1), t.count, idx, extra, md, nil)
            }
            if emptyMatch && status == PCRE2_ERROR_NOMATCH {
                // HTCondor steps past the end here and PCRE then rejects the offset: ERROR.
                if idx >= target.count { return nil }
                out.append(target[idx])
                idx += 1
                emptyMatch = false
                status = 0
                continue
            }
            if status >= 0 {
                let ov = pcre2_get_ovector_pointer_8(md)!
                let groups = Int(status)
                let m0 = Int(ov[0]), m1 = Int(ov[1])
                if fullTarget { out += target[idx..<m0] }
                var i = 0
                while i < replacement.count {
                    let c = replacement[i]
                    if c == 92, i + 1 < replacement.count, Lexer.isDigit(replacement[i + 1]) {
                        let g = Int(replacement[i + 1] - 48)
                        if g >= groups { return nil }
                        let s = ov[2 * g], e = ov[2 * g + 1]
                        if s != ~Int(0) && e != ~Int(0) { out += target[Int(s)..<Int(e)] }  // ~0 is PCRE2_UNSET
                        i += 2
                        continue
                    }
                    out.append(c)
                    i += 1
                }
                idx = m1
                if m0 == m1 { emptyMatch = true }
            }
        } while status >= 0 && global
        if status < 0 && status != PCRE2_ERROR_NOMATCH { return nil }
        if fullTarget { out += target[Swift.min(idx, target.count)...] }
        return out
    }
}
