/// A small, fast, seedable random generator (xoshiro256**), injected wherever Fulcrum needs chance so
/// that tests can fix the seed and replay exactly.
public struct FastRandom: RandomNumberGenerator, Sendable {
    private var s0, s1, s2, s3: UInt64

    public init(seed: UInt64) {
        var sm = seed
        func splitmix(_ x: inout UInt64) -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s0 = splitmix(&sm); s1 = splitmix(&sm); s2 = splitmix(&sm); s3 = splitmix(&sm)
    }

    @inline(__always)
    public mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3
        s2 ^= t
        s3 = s3 << 45 | s3 >> 19
        return result
    }

    /// A uniform integer in `0..<bound` (bound > 0), without modulo bias worth measuring for pool sizes.
    @inline(__always)
    public mutating func below(_ bound: Int) -> Int {
        Int(truncatingIfNeeded: (UInt64(bound).multipliedFullWidth(by: next())).high)
    }
}

/// Stable 64-bit hashing (FNV-1a followed by a finaliser), the same in every process and across restarts,
/// for consistent hashing of client addresses and backend identities.
public enum StableHash {
    @inline(__always)
    public static func mix(_ x: UInt64) -> UInt64 {
        var z = x
        z = (z ^ (z >> 33)) &* 0xFF51_AFD7_ED55_8CCD
        z = (z ^ (z >> 33)) &* 0xC4CE_B9FE_1A85_EC53
        return z ^ (z >> 33)
    }

    public static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325 ^ seed
        for byte in bytes { h = (h ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return mix(h)
    }

    public static func hash(_ text: String, seed: UInt64 = 0) -> UInt64 {
        var copy = text
        return copy.withUTF8 { hash(UnsafeRawBufferPointer($0), seed: seed) }
    }
}
