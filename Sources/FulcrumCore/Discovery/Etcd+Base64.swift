extension Etcd {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let decoding: [UInt8] = {
        var table = [UInt8](repeating: 0xff, count: 256)
        for (index, byte) in alphabet.enumerated() { table[Int(byte)] = UInt8(index) }
        return table
    }()

    /// Standard base64 with padding, as the gateway writes and reads bytes.
    public static func base64(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let a = UInt32(bytes[index])
            let b = index + 1 < bytes.count ? UInt32(bytes[index + 1]) : 0
            let c = index + 2 < bytes.count ? UInt32(bytes[index + 2]) : 0
            let group = a << 16 | b << 8 | c
            out.append(alphabet[Int(group >> 18 & 63)])
            out.append(alphabet[Int(group >> 12 & 63)])
            out.append(index + 1 < bytes.count ? alphabet[Int(group >> 6 & 63)] : UInt8(ascii: "="))
            out.append(index + 2 < bytes.count ? alphabet[Int(group & 63)] : UInt8(ascii: "="))
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Standard base64, padded or not; nil for anything else (another alphabet, stray characters, bits left
    /// over).
    public static func decodeBase64(_ text: String) -> [UInt8]? {
        var digits = Array(text.utf8)
        var padding = 0
        while digits.last == UInt8(ascii: "=") && padding < 2 {
            digits.removeLast()
            padding += 1
        }
        if padding > 0 && (digits.count + padding) % 4 != 0 { return nil }
        guard digits.count % 4 != 1 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(digits.count * 3 / 4)
        var group: UInt32 = 0
        var count = 0
        for digit in digits {
            let value = decoding[Int(digit)]
            guard value != 0xff else { return nil }
            group = group << 6 | UInt32(value)
            count += 1
            if count == 4 {
                out += [UInt8(group >> 16 & 0xff), UInt8(group >> 8 & 0xff), UInt8(group & 0xff)]
                group = 0
                count = 0
            }
        }
        switch count {
        case 2:
            guard group & 0xf == 0 else { return nil }
            out.append(UInt8(group >> 4 & 0xff))
        case 3:
            guard group & 0x3 == 0 else { return nil }
            out += [UInt8(group >> 10 & 0xff), UInt8(group >> 2 & 0xff)]
        default:
            break
        }
        return out
    }
}
