/// DNS messages (RFC 1035) as the SRV client needs them: a query to encode, and a response to parse with
/// its header, questions, and answer, authority and additional records (A, AAAA, SRV, CNAME and SOA read;
/// other types kept as bytes). Pure: no I/O.
///
/// The parser takes any bytes: a malformed message (cut short, a label or name too long, a compression
/// pointer that does not point backwards, record data of the wrong size) is a thrown `DNSMessageError`,
/// never a crash, and the work is bounded by the message's length (counts in the header reserve nothing).
/// A response with the TC (truncated) bit keeps the records that arrived whole.
public struct DNSMessage: Equatable, Sendable {
    public struct Header: Equatable, Sendable {
        public var id: UInt16
        public var flags: UInt16

        public init(id: UInt16, flags: UInt16) {
            self.id = id
            self.flags = flags
        }

        public var isResponse: Bool { flags & 0x8000 != 0 }
        public var opcode: UInt16 { (flags >> 11) & 0xF }
        public var isAuthoritative: Bool { flags & 0x0400 != 0 }
        /// TC: the answer did not fit in the datagram.
        public var isTruncated: Bool { flags & 0x0200 != 0 }
        public var recursionDesired: Bool { flags & 0x0100 != 0 }
        public var recursionAvailable: Bool { flags & 0x0080 != 0 }
        public var rcode: RCode { RCode(rawValue: flags & 0xF) }
    }

    /// The response code.
    public struct RCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public var rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }

        public static let noError = RCode(rawValue: 0)
        public static let formatError = RCode(rawValue: 1)
        public static let serverFailure = RCode(rawValue: 2)
        /// NXDOMAIN: the name does not exist.
        public static let nameError = RCode(rawValue: 3)
        public static let notImplemented = RCode(rawValue: 4)
        public static let refused = RCode(rawValue: 5)

        public var description: String {
            switch rawValue {
            case 0: return "NOERROR"
            case 1: return "FORMERR"
            case 2: return "SERVFAIL"
            case 3: return "NXDOMAIN"
            case 4: return "NOTIMP"
            case 5: return "REFUSED"
            default: return "RCODE\(rawValue)"
            }
        }
    }

    public struct RecordType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public var rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }

        public static let a = RecordType(rawValue: 1)
        public static let cname = RecordType(rawValue: 5)
        public static let soa = RecordType(rawValue: 6)
        public static let aaaa = RecordType(rawValue: 28)
        public static let srv = RecordType(rawValue: 33)
        /// EDNS(0)'s pseudo-record.
        public static let opt = RecordType(rawValue: 41)

        public var description: String {
            switch rawValue {
            case 1: return "A"
            case 5: return "CNAME"
            case 6: return "SOA"
            case 28: return "AAAA"
            case 33: return "SRV"
            case 41: return "OPT"
            default: return "TYPE\(rawValue)"
            }
        }
    }

    /// The Internet class.
    public static let classIN: UInt16 = 1

    public struct Question: Equatable, Sendable {
        public var name: String
        public var type: RecordType
        public var recordClass: UInt16

        public init(name: String, type: RecordType, recordClass: UInt16 = DNSMessage.classIN) {
            self.name = name
            self.type = type
            self.recordClass = recordClass
        }
    }

    /// An SRV record's data (RFC 2782).
    public struct SRV: Equatable, Sendable {
        public var priority: UInt16
        public var weight: UInt16
        public var port: UInt16
        /// The target host; "" (the root) means the service is not offered.
        public var target: String

        public init(priority: UInt16, weight: UInt16, port: UInt16, target: String) {
            self.priority = priority
            self.weight = weight
            self.port = port
            self.target = target
        }
    }

    public enum RecordData: Equatable, Sendable {
        /// 4 bytes.
        case a([UInt8])
        /// 16 bytes.
        case aaaa([UInt8])
        case srv(SRV)
        case cname(String)
        /// A zone's SOA; its `minimum` (with the record's TTL) bounds how long a negative answer holds.
        case soa(minimum: UInt32)
        case other([UInt8])
    }

    public struct Record: Equatable, Sendable {
        public var name: String
        public var type: RecordType
        public var recordClass: UInt16
        /// As sent; see `ttlSeconds`.
        public var ttl: UInt32
        public var data: RecordData

        public init(name: String, type: RecordType, recordClass: UInt16 = DNSMessage.classIN, ttl: UInt32, data: RecordData) {
            self.name = name
            self.type = type
            self.recordClass = recordClass
            self.ttl = ttl
            self.data = data
        }

        /// The TTL in seconds; a value with the top bit set counts as 0 (RFC 2181 section 8).
        public var ttlSeconds: Int { ttl > UInt32(Int32.max) ? 0 : Int(ttl) }
    }

    public var header: Header
    public var questions: [Question] = []
    public var answers: [Record] = []
    public var authority: [Record] = []
    public var additional: [Record] = []
}

/// Why bytes are not a DNS message, or a name cannot be put in one.
public enum DNSMessageError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The message ends before the part being read (at this offset).
    case truncated(at: Int)
    /// A label length byte with the reserved top bits 01 or 10.
    case badLabel(at: Int)
    /// A compression pointer that does not point before itself (which could loop).
    case badPointer(at: Int)
    /// A name longer than 255 bytes on the wire.
    case nameTooLong(at: Int)
    /// Record data that does not fit its type (an A record that is not 4 bytes).
    case badRecordData(type: UInt16, at: Int)
    /// A name that cannot be encoded in a query.
    case invalidName(String)

    public var description: String {
        switch self {
        case .truncated(let at): return "message cut short at byte \(at)"
        case .badLabel(let at): return "unsupported label type at byte \(at)"
        case .badPointer(let at): return "compression pointer at byte \(at) does not point backwards"
        case .nameTooLong(let at): return "name longer than 255 bytes at byte \(at)"
        case .badRecordData(let type, let at): return "malformed \(DNSMessage.RecordType(rawValue: type)) record data at byte \(at)"
        case .invalidName(let name): return "'\(name)' is not a name that can be queried"
        }
    }
}

// MARK: - Encoding a query

extension DNSMessage {
    /// A standard query for `name` (with or without its final dot) and `type` in class IN, with `id`, the RD
    /// bit when `recursionDesired`, and, when `udpPayloadSize` is given, an EDNS(0) OPT record announcing
    /// that the client takes UDP answers of that size (so larger SRV sets fit without truncation).
    public static func query(id: UInt16, name: String, type: RecordType, recursionDesired: Bool = true,
                             udpPayloadSize: UInt16? = 1232) throws(DNSMessageError) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32 + name.utf8.count)
        func put16(_ value: UInt16) { bytes.append(UInt8(value >> 8)); bytes.append(UInt8(value & 0xFF)) }
        put16(id)
        put16(recursionDesired ? 0x0100 : 0)
        put16(1)
        put16(0)
        put16(0)
        put16(udpPayloadSize == nil ? 0 : 1)
        bytes += try encodeName(name)
        put16(type.rawValue)
        put16(classIN)
        if let size = udpPayloadSize {
            bytes.append(0) // the root name
            put16(RecordType.opt.rawValue)
            put16(size) // the class field carries the payload size
            put16(0) // extended rcode and version
            put16(0) // flags
            put16(0) // no options
        }
        return bytes
    }

    /// `redis.internal` as labels: each 1 to 63 bytes, 255 bytes in all.
    static func encodeName(_ name: String) throws(DNSMessageError) -> [UInt8] {
        let text = name.hasSuffix(".") ? String(name.dropLast()) : name
        var bytes: [UInt8] = []
        if !text.isEmpty {
            for label in text.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
                guard (1...63).contains(label.count), !label.contains(UInt8(ascii: "\\")) else {
                    throw .invalidName(name)
                }
                bytes.append(UInt8(label.count))
                bytes += label
            }
        }
        bytes.append(0)
        guard bytes.count <= 255 else { throw .invalidName(name) }
        return bytes
    }

    /// Whether two names are the same: letter case and a final dot aside.
    public static func sameName(_ a: String, _ b: String) -> Bool {
        func canonical(_ s: String) -> Substring.UTF8View {
            (s.hasSuffix(".") ? Substring(s.dropLast()) : Substring(s)).utf8
        }
        let x = canonical(a), y = canonical(b)
        guard x.count == y.count else { return false }
        return zip(x, y).allSatisfy { lower($0) == lower($1) }
    }

    private static func lower(_ byte: UInt8) -> UInt8 {
        (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) ? byte | 0x20 : byte
    }
}

// MARK: - Parsing a response

extension DNSMessage {
    /// Parses a whole message. Throws on anything malformed, except that in a message with the TC bit set
    /// the records after the last whole one are dropped instead.
    public init(parsing bytes: [UInt8]) throws(DNSMessageError) {
        var reader = Reader(bytes: bytes)
        let id = try reader.u16()
        let flags = try reader.u16()
        header = Header(id: id, flags: flags)
        let counts = [try reader.u16(), try reader.u16(), try reader.u16(), try reader.u16()]
        do throws(DNSMessageError) {
            for _ in 0..<counts[0] {
                let name = try reader.name()
                let type = try reader.u16()
                let recordClass = try reader.u16()
                questions.append(Question(name: name, type: RecordType(rawValue: type), recordClass: recordClass))
            }
            for _ in 0..<counts[1] { answers.append(try reader.record()) }
            for _ in 0..<counts[2] { authority.append(try reader.record()) }
            for _ in 0..<counts[3] { additional.append(try reader.record()) }
        } catch .truncated where header.isTruncated {
            // What arrived whole is kept; the caller sees `isTruncated`.
        }
    }

    /// Reads big-endian fields and names from a message, every read bounds-checked.
    struct Reader {
        let bytes: [UInt8]
        var offset = 0

        mutating func u8() throws(DNSMessageError) -> UInt8 {
            guard offset < bytes.count else { throw .truncated(at: offset) }
            defer { offset += 1 }
            return bytes[offset]
        }

        mutating func u16() throws(DNSMessageError) -> UInt16 {
            guard offset + 2 <= bytes.count else { throw .truncated(at: offset) }
            defer { offset += 2 }
            return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
        }

        mutating func u32() throws(DNSMessageError) -> UInt32 {
            guard offset + 4 <= bytes.count else { throw .truncated(at: offset) }
            defer { offset += 4 }
            return UInt32(bytes[offset]) << 24 | UInt32(bytes[offset + 1]) << 16 | UInt32(bytes[offset + 2]) << 8
                | UInt32(bytes[offset + 3])
        }

        mutating func take(_ count: Int) throws(DNSMessageError) -> [UInt8] {
            guard count >= 0, offset + count <= bytes.count else { throw .truncated(at: offset) }
            defer { offset += count }
            return Array(bytes[offset..<(offset + count)])
        }

        /// A name, following compression pointers. Each pointer must point before itself, and a name is at
        /// most 255 bytes long as labels: so a name is read in bounded steps and pointers cannot loop.
        /// Labels are joined with dots; a dot, a backslash or a byte outside printable ASCII inside a label
        /// is written `\DDD`, so the text never reads as another name.
        mutating func name() throws(DNSMessageError) -> String {
            var text: [UInt8] = []
            var position = offset
            var resume: Int?
            var wireLength = 1
            var jumps = 0
            while true {
                guard position < bytes.count else { throw .truncated(at: position) }
                let length = Int(bytes[position])
                switch length & 0xC0 {
                case 0x00:
                    if length == 0 {
                        offset = resume ?? position + 1
                        return String(decoding: text, as: UTF8.self)
                    }
                    guard position + 1 + length <= bytes.count else { throw .truncated(at: position) }
                    wireLength += length + 1
                    guard wireLength <= 255 else { throw .nameTooLong(at: position) }
                    if !text.isEmpty { text.append(UInt8(ascii: ".")) }
                    for byte in bytes[(position + 1)...(position + length)] { Self.appendEscaped(byte, to: &text) }
                    position += 1 + length
                case 0xC0:
                    guard position + 1 < bytes.count else { throw .truncated(at: position) }
                    let target = (length & 0x3F) << 8 | Int(bytes[position + 1])
                    jumps += 1
                    guard target < position, jumps <= 128 else { throw .badPointer(at: position) }
                    if resume == nil { resume = position + 2 }
                    position = target
                default:
                    throw .badLabel(at: position)
                }
            }
        }

        static func appendEscaped(_ byte: UInt8, to text: inout [UInt8]) {
            if byte == UInt8(ascii: ".") || byte == UInt8(ascii: "\\") || byte < 0x21 || byte > 0x7E {
                text.append(UInt8(ascii: "\\"))
                text.append(UInt8(ascii: "0") + byte / 100)
                text.append(UInt8(ascii: "0") + byte / 10 % 10)
                text.append(UInt8(ascii: "0") + byte % 10)
            } else {
                text.append(byte)
            }
        }

        mutating func record() throws(DNSMessageError) -> Record {
            let owner = try name()
            let type = RecordType(rawValue: try u16())
            let recordClass = try u16()
            let ttl = try u32()
            let length = Int(try u16())
            let start = offset
            guard start + length <= bytes.count else { throw .truncated(at: start) }
            let end = start + length
            let data: RecordData
            switch type {
            case .a:
                guard length == 4 else { throw .badRecordData(type: type.rawValue, at: start) }
                data = .a(try take(4))
            case .aaaa:
                guard length == 16 else { throw .badRecordData(type: type.rawValue, at: start) }
                data = .aaaa(try take(16))
            case .srv:
                guard length >= 7 else { throw .badRecordData(type: type.rawValue, at: start) }
                let priority = try u16(), weight = try u16(), port = try u16()
                let target = try name()
                guard offset == end else { throw .badRecordData(type: type.rawValue, at: start) }
                data = .srv(SRV(priority: priority, weight: weight, port: port, target: target))
            case .cname:
                let target = try name()
                guard offset == end else { throw .badRecordData(type: type.rawValue, at: start) }
                data = .cname(target)
            case .soa:
                _ = try name()
                _ = try name()
                guard offset + 20 == end else { throw .badRecordData(type: type.rawValue, at: start) }
                offset += 16 // serial, refresh, retry, expire
                data = .soa(minimum: try u32())
            default:
                data = .other(try take(length))
            }
            offset = end
            return Record(name: owner, type: type, recordClass: recordClass, ttl: ttl, data: data)
        }
    }
}

// MARK: - resolv.conf

/// The name servers of a resolv.conf.
public enum ResolvConf {
    /// The addresses of the `nameserver` lines, in order: an IP address means port 53; `IP:port` and
    /// `[IPv6]:port` (which evdns also reads there, though the C library does not) keep their port.
    /// Comments (`#`, `;`) and every other line are ignored, as is an IPv6 address with a zone
    /// (`fe80::1%eth0`), which a socket address here cannot carry. Empty when there are none: the caller
    /// then asks 127.0.0.1, as the C library does.
    public static func nameServers(in text: String) -> [SocketAddress] {
        var servers: [SocketAddress] = []
        for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2, fields[0] == "nameserver" else { continue }
            let address = String(fields[1])
            if let v4 = ConfigValue.parseIPv4(address) {
                servers.append(.ipv4(v4, port: 53))
            } else if let v6 = ConfigValue.parseIPv6(address) {
                servers.append(.ipv6(v6, port: 53))
            } else if case .success(let withPort) = ConfigValue.address(address), withPort.port != 0,
                      address.first == "[" || address.first?.isNumber == true {
                servers.append(withPort)
            }
        }
        return servers
    }
}
