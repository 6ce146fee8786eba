/// How DNS answers become backends, and how a DNS source waits after a failure. Pure: no I/O.
public enum DNSRecords {
    /// Addresses without duplicates in a stable order (IPv4 before IPv6, then by bytes), so a server that
    /// rotates its answers (round-robin DNS) changes nothing.
    public static func ordered(_ addresses: [SocketAddress]) -> [SocketAddress] {
        var seen = Set<SocketAddress>()
        return addresses.filter { seen.insert($0).inserted }.sorted(by: precedes)
    }

    /// The order of `ordered`: family, then address bytes, then port.
    public static func precedes(_ a: SocketAddress, _ b: SocketAddress) -> Bool {
        func key(_ address: SocketAddress) -> (Int, [UInt8]) {
            switch address {
            case .ipv4(let v, _): return (4, [v.0, v.1, v.2, v.3])
            case .ipv6(let bytes, _): return (6, bytes)
            }
        }
        let (fa, ba) = key(a), (fb, bb) = key(b)
        if fa != fb { return fa < fb }
        if ba != bb { return ba.lexicographicallyPrecedes(bb) }
        return a.port < b.port
    }

    /// A socket address from raw bytes as a resolver returns them (4 or 16), or nil for any other length.
    public static func address(_ bytes: [UInt8], port: UInt16) -> SocketAddress? {
        switch bytes.count {
        case 4: return .ipv4((bytes[0], bytes[1], bytes[2], bytes[3]), port: port)
        case 16: return .ipv6(bytes, port: port)
        default: return nil
        }
    }

    /// One SRV record, with the addresses its target resolved to (their ports are ignored).
    public struct SRVTarget: Equatable, Sendable {
        public var priority: UInt16
        public var weight: UInt16
        public var port: UInt16
        public var target: String
        public var addresses: [SocketAddress]

        public init(priority: UInt16, weight: UInt16, port: UInt16, target: String, addresses: [SocketAddress]) {
            self.priority = priority
            self.weight = weight
            self.port = port
            self.target = target
            self.addresses = addresses
        }
    }

    /// The backends SRV records describe: one per (target address, port). Priorities become tiers: the
    /// distinct priorities in ascending order rank 0, 1, 2, ... (at most `maxTier`), so `10, 20` and `0, 1`
    /// both give a primary tier and a backup tier. Weights are taken as they are within 1...1000 (a weight
    /// of 0, "rarely", becomes 1). An address and port listed by several records is one backend, with the
    /// values of its most preferred record (lowest priority, then the first listed). Ordered by tier, then
    /// address.
    public static func backends(_ targets: [SRVTarget], maxTier: Int = 100,
                                maxWeight: Int = FulcrumConfig.Backend.maxWeight) -> [DiscoveredBackend] {
        let priorities = Set(targets.map(\.priority)).sorted()
        let tier = Dictionary(uniqueKeysWithValues: priorities.enumerated().map { ($1, min($0, maxTier)) })
        var seen = Set<SocketAddress>()
        var backends: [FulcrumConfig.Backend] = []
        // A stable sort by priority keeps the listed order among equals.
        let preferred = targets.enumerated().sorted { ($0.element.priority, $0.offset) < ($1.element.priority, $1.offset) }
        for (_, record) in preferred {
            for address in record.addresses {
                let endpoint = address.withPort(record.port)
                guard seen.insert(endpoint).inserted else { continue }
                backends.append(FulcrumConfig.Backend(address: endpoint, weight: min(max(Int(record.weight), 1), maxWeight),
                                                      priority: tier[record.priority] ?? 0))
            }
        }
        backends.sort { $0.priority != $1.priority ? $0.priority < $1.priority : precedes($0.address, $1.address) }
        return backends.map { DiscoveredBackend($0) }
    }
}

/// How long a DNS source waits before asking again after failures in a row: 1 s, then doubling, at most
/// 30 s and at most the longest TTL it would wait after a success. A success starts it over.
public struct DNSRetryBackoff: Equatable, Sendable {
    public static let first: Duration = .seconds(1)
    public static let longest: Duration = .seconds(30)

    /// Failures in a row so far.
    public private(set) var failures = 0

    public init() {}

    /// The wait after one more failure.
    public mutating func next(cap: Duration) -> Duration {
        failures += 1
        var wait = Self.first
        for _ in 1..<min(failures, 16) { wait *= 2 }
        return min(wait, Self.longest, cap)
    }

    public mutating func reset() { failures = 0 }
}
