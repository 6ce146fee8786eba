/// What `fulcrum register` keeps in etcd, and how it checks its backend: the command line's options,
/// validated (every problem reported at once, each with its fix).
public struct Registration: Equatable, Sendable {
    /// etcd's client URLs, tried in order.
    public var endpoints: [SocketAddress]
    /// The full key: the prefix and the name.
    public var key: String
    /// The record written under the key (its state is `enabled` while registered, `drain` when stopping).
    public var backend: FulcrumConfig.Backend
    /// The lease's TTL, in whole seconds: the key outlives a dead sidecar by at most this long.
    public var ttl: Duration
    /// How long the key says `drain` before it is deleted, on SIGTERM or SIGINT.
    public var drainWait: Duration
    /// The check, with the proxy's own settings type.
    public var health: FulcrumConfig.Health

    /// Keepalives are sent three times per TTL, so that one lost keepalive does not let the lease expire.
    public var keepaliveInterval: Duration { ttl / 3 }

    /// etcd raises a shorter TTL to its minimum (2s with its default election timeout).
    public static let ttlRange: ClosedRange<Duration> = .seconds(2) ... .seconds(24 * 3600)
    public static let drainWaitRange: ClosedRange<Duration> = .zero ... .seconds(3600)

    public init(endpoints: [SocketAddress], key: String, backend: FulcrumConfig.Backend, ttl: Duration = .seconds(3),
                drainWait: Duration = .seconds(2), health: FulcrumConfig.Health) {
        self.endpoints = endpoints
        self.key = key
        self.backend = backend
        self.ttl = ttl
        self.drainWait = drainWait
        self.health = health
    }

    /// The options as typed on the command line.
    public struct Options: Sendable {
        public var etcd = ""
        public var prefix = ""
        public var address = ""
        public var key: String?
        public var weight = 1
        public var priority = 0
        public var ttl = "3s"
        public var drainWait = "2s"
        public var check = "tcp"
        public var send: String?
        public var sendHex: String?
        public var expect: String?
        public var expectRegex: String?
        public var httpPath: String?
        public var httpHost: String?
        public var httpStatus: String?
        public var interval = "1s"
        public var timeout = "1s"
        public var rise = 2
        public var fall = 2

        public init() {}
    }

    /// Every problem with the options, one line each: the flag, what is wrong, and the fix.
    public struct Problems: Error, Equatable, Sendable, CustomStringConvertible {
        public let messages: [String]
        public var description: String { messages.joined(separator: "\n") }
    }

    /// The registration the options describe, or every problem with them.
    public static func parse(_ options: Options) -> Result<Registration, Problems> {
        var problems: [String] = []
        func problem(_ text: String) { problems.append(text) }

        var endpoints: [SocketAddress] = []
        let urls = options.etcd.split(separator: ",", omittingEmptySubsequences: false).map { String($0).trimmingSpaces }
        if options.etcd.trimmingSpaces.isEmpty {
            problem("--etcd is missing; name etcd's client URL, e.g. --etcd http://127.0.0.1:2379")
        } else {
            for url in urls {
                switch Etcd.endpoint(url) {
                case .success(let address): endpoints.append(address)
                case .failure(let error): problem("--etcd \(url.isEmpty ? "(empty)" : url): \(error)")
                }
            }
        }

        let prefix = options.prefix
        if prefix.isEmpty {
            problem("--prefix is missing; use the prefix the proxy's pool watches, e.g. --prefix /fulcrum/pools/redis/")
        } else if !prefix.hasSuffix("/") {
            problem("--prefix \(prefix) does not end with '/'; end it with one, as the pool's prefix does, e.g. \(prefix)/")
        } else if prefix.contains("\0") {
            problem("--prefix contains a NUL byte; use a plain key prefix, e.g. /fulcrum/pools/redis/")
        }

        var address: SocketAddress?
        switch ConfigValue.address(options.address) {
        case .success(let parsed) where parsed.port == 0:
            problem("--address \(options.address) has port 0; name the port the backend listens on, e.g. 10.0.0.5:6379")
        case .success(let parsed) where parsed.isUnspecified:
            problem("--address \(options.address) is the wildcard address; register the address clients reach the backend at, e.g. 10.0.0.5:6379")
        case .success(let parsed):
            address = parsed
        case .failure(.hostname(let host)):
            problem("--address \(options.address) names the host '\(host)'; the record holds an IP address: write it, e.g. 10.0.0.5:6379")
        case .failure(.portOutOfRange(let port)):
            problem("--address \(options.address): port \(port) is out of range; use a port from 1 to 65535")
        case .failure(.malformed):
            problem(options.address.isEmpty
                ? "--address is missing; name the backend's IP address and port, e.g. --address 10.0.0.5:6379"
                : "--address \(options.address) is not an IP address and port; write it as 10.0.0.5:6379 or '[fd00::5]:6379'")
        }

        let name = options.key ?? address?.description ?? options.address
        if options.key != nil && (name.isEmpty || name.contains("\0")) {
            problem("--key must be a non-empty name without NUL bytes, e.g. --key redis-1")
        }

        if !ConfigLimits.weight.contains(options.weight) {
            problem("--weight \(options.weight) is out of range; use \(ConfigLimits.weight.lowerBound) to \(ConfigLimits.weight.upperBound)")
        }
        if !ConfigLimits.priority.contains(options.priority) {
            problem("--priority \(options.priority) is out of range; use \(ConfigLimits.priority.lowerBound) to \(ConfigLimits.priority.upperBound) (0 is preferred)")
        }

        let ttl = duration(options.ttl, "--ttl", in: ttlRange, &problems)
        if let ttl, ttl.components.attoseconds != 0 {
            problem("--ttl \(options.ttl) is not a whole number of seconds; etcd counts leases in seconds: use e.g. 3s")
        }
        let drainWait = duration(options.drainWait, "--drain-wait", in: drainWaitRange, &problems)

        var health = FulcrumConfig.Health()
        if let interval = duration(options.interval, "--interval", in: ConfigLimits.healthInterval, &problems) {
            health.interval = interval
            health.downInterval = interval
        }
        if let timeout = duration(options.timeout, "--timeout", in: ConfigLimits.timeout, &problems) { health.timeout = timeout }
        for (flag, value) in [("--rise", options.rise), ("--fall", options.fall)] where !ConfigLimits.riseFall.contains(value) {
            problem("\(flag) \(value) is out of range; use \(ConfigLimits.riseFall.lowerBound) to \(ConfigLimits.riseFall.upperBound)")
        }
        health.rise = options.rise
        health.fall = options.fall
        if let check = self.check(options, &problems) { health.check = check }

        guard problems.isEmpty, let address, let ttl, let drainWait else { return .failure(Problems(messages: problems)) }
        return .success(Registration(endpoints: endpoints, key: prefix + name,
                                     backend: FulcrumConfig.Backend(address: address, weight: options.weight,
                                                                    priority: options.priority),
                                     ttl: ttl, drainWait: drainWait, health: health))
    }

    private static func check(_ options: Options, _ problems: inout [String]) -> FulcrumConfig.Health.Check? {
        let given: [(flag: String, value: String?, check: String)] = [
            ("--send", options.send, "send_expect"), ("--send-hex", options.sendHex, "send_expect"),
            ("--expect", options.expect, "send_expect"), ("--expect-regex", options.expectRegex, "send_expect"),
            ("--http-path", options.httpPath, "http"), ("--http-host", options.httpHost, "http"),
            ("--http-status", options.httpStatus, "http"),
        ]
        guard ["tcp", "send_expect", "http"].contains(options.check) else {
            problems.append("--check \(options.check) is not a check; use tcp, send_expect or http")
            return nil
        }
        for option in given where option.value != nil && option.check != options.check {
            problems.append("\(option.flag) applies to --check \(option.check), not \(options.check); drop it or use --check \(option.check)")
        }
        switch options.check {
        case "send_expect":
            var send: [UInt8] = []
            if let text = options.send { send = ConfigLoader.unescape(text) }
            if let text = options.sendHex {
                if options.send != nil { problems.append("--send and --send-hex both given; keep one of them") }
                if let bytes = ConfigLoader.hexBytes(text) {
                    send = bytes
                } else {
                    problems.append("--send-hex '\(text)' is not hex; use pairs of hex digits, e.g. 50494e470d0a")
                }
            }
            if let pattern = options.expectRegex {
                if options.expect != nil { problems.append("--expect and --expect-regex both given; keep one of them") }
                guard (try? Regex(pattern)) != nil else {
                    problems.append("--expect-regex '\(pattern)' is not a valid regular expression")
                    return nil
                }
                return .sendExpect(send: send, expect: .regex(pattern))
            }
            guard let expect = options.expect else {
                problems.append("--check send_expect needs --expect or --expect-regex; e.g. --send 'PING\\r\\n' --expect +PONG for Redis")
                return nil
            }
            return .sendExpect(send: send, expect: .prefix(ConfigLoader.unescape(expect)))
        case "http":
            let path = options.httpPath ?? "/"
            if !path.hasPrefix("/") { problems.append("--http-path '\(path)' does not start with /; use e.g. /healthz") }
            var statuses: [ClosedRange<Int>] = [200...399]
            if let text = options.httpStatus {
                statuses = []
                for part in text.split(separator: ",", omittingEmptySubsequences: false) {
                    let bounds = part.split(separator: "-", omittingEmptySubsequences: false).map { Int(String($0).trimmingSpaces) }
                    if bounds.count == 1, let code = bounds[0], (100...599).contains(code) {
                        statuses.append(code...code)
                    } else if bounds.count == 2, let low = bounds[0], let high = bounds[1], 100 <= low, low <= high, high <= 599 {
                        statuses.append(low...high)
                    } else {
                        problems.append("--http-status '\(text)' is not a list of HTTP statuses; use e.g. 200, 200,204 or 200-299")
                        return nil
                    }
                }
            }
            return .http(path: path, host: options.httpHost, statuses: statuses)
        default:
            return .tcp
        }
    }

    private static func duration(_ text: String, _ flag: String, in range: ClosedRange<Duration>,
                                 _ problems: inout [String]) -> Duration? {
        switch ConfigValue.parseDuration(text) {
        case .success(let value) where range.contains(value) && (value == .zero || value >= ConfigLimits.resolution):
            return value
        case .success, .failure(.tooLarge):
            problems.append("\(flag) \(text) is out of range; use a duration from \(range.configText)")
        case .failure(.malformed):
            problems.append("\(flag) '\(text)' is not a duration; use \(ConfigValue.durationHint)")
        }
        return nil
    }
}

extension SocketAddress {
    /// 0.0.0.0 or ::, which no client can connect to.
    var isUnspecified: Bool {
        switch self {
        case .ipv4(let a, _): return a.0 == 0 && a.1 == 0 && a.2 == 0 && a.3 == 0
        case .ipv6(let bytes, _): return bytes.allSatisfy { $0 == 0 }
        }
    }
}
