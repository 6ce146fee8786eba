import CLibevent
import Glibc

/// Asynchronous A and AAAA lookups through libevent's evdns, on one event loop: nothing blocks, every
/// completion runs on the loop's thread, and each answer carries its TTL (the least of its records').
///
/// - Name servers come from a resolv.conf (only its `nameserver` lines: no search domains, no `ndots`, so
///   a name is always asked as written) or from explicit `IP:port` strings.
/// - `localhost` is 127.0.0.1 (and ::1) without a query; so is an IP literal of the asked family.
/// - A query is sent up to `attempts` times, each try waiting `timeout`; evdns moves a retry to the next
///   name server, and retries a server failure (SERVFAIL) as it would a timeout.
/// - evdns 2.1 asks without EDNS(0) and has no TCP: an answer that does not fit in 512 bytes (about 30
///   IPv4 or 17 IPv6 addresses) comes truncated and fails as `.other("reply truncated or ill-formed")`;
///   and it keeps at most 32 addresses of an answer.
/// - A cancelled lookup, and every lookup still pending when the resolver is closed, never completes.
///   evdns still calls back once for each (with "cancelled" or "shut down"), possibly after `close()`, so
///   each lookup keeps one retain for C until then; only an event base freed before that callback leaks it.
public final class DNSResolver {
    /// Why a lookup failed.
    public enum Failure: Error, Equatable, Sendable, CustomStringConvertible {
        /// The name does not exist (NXDOMAIN).
        case noSuchName
        /// No name server answered in time.
        case timeout
        /// A name server answered with an error: refused, not implemented, format error, server failure.
        case serverFailure(String)
        /// Anything else: a truncated or malformed answer, a name that cannot be asked.
        case other(String)

        public var description: String {
            switch self {
            case .noSuchName: return "no such name (NXDOMAIN)"
            case .timeout: return "timed out"
            case .serverFailure(let why): return "server failure: \(why)"
            case .other(let why): return why
            }
        }
    }

    /// The addresses of one family (4 or 16 bytes each, in the order the server gave them) and the TTL in
    /// seconds. A name that exists without records of the family has an answer with no addresses.
    public struct Answer: Equatable, Sendable {
        public var addresses: [[UInt8]]
        public var ttlSeconds: Int

        public init(addresses: [[UInt8]], ttlSeconds: Int) {
            self.addresses = addresses
            self.ttlSeconds = ttlSeconds
        }

        /// The addresses as socket addresses with `port`.
        public func endpoints(port: UInt16) -> [Endpoint] {
            addresses.map { bytes in
                bytes.count == 4 ? Endpoint(ipv4: (bytes[0], bytes[1], bytes[2], bytes[3]), port: port)
                    : Endpoint(ipv6: bytes, port: port)
            }
        }
    }

    public typealias Completion = (Result<Answer, Failure>) -> Void

    private let base: EventBase
    private var dns: OpaquePointer?
    /// Lookups not completed yet, so `close()` can silence them.
    private var pending: [ObjectIdentifier: DNSLookup] = [:]
    /// Name servers that could not be used (a malformed address, no socket for its family).
    public let problems: [String]
    /// How many name servers evdns asks.
    public var nameServerCount: Int { dns.map { Int(evdns_base_count_nameservers($0)) } ?? 0 }

    /// A resolver on `base` asking `servers` (`IP` or `IP:port`, `[IPv6]:port`), or, when there are none,
    /// the name servers `resolvConf` lists (127.0.0.1 if it lists none or is missing, as the C library
    /// does). Each try of a query waits `timeout`; a query is sent at most `attempts` times. Throws when
    /// no name server can be used.
    public init(base: EventBase, servers: [String], resolvConf: String = "/etc/resolv.conf", timeout: Duration,
                attempts: Int) throws(SystemError) {
        self.base = base
        // No flags: no name servers, search list or options from the system until we add them.
        guard let dns = evdns_base_new(base.base, 0) else { throw SystemError("evdns_base_new", errno: ENOMEM) }
        var problems: [String] = []
        if servers.isEmpty {
            // Only the name servers: a search list would turn "redis" into "redis.corp.example" behind the
            // configuration's back, and its options would override the timeout set below.
            let result = evdns_base_resolv_conf_parse(dns, DNS_OPTION_NAMESERVERS, resolvConf)
            // 1: no file, 6: no nameserver line; evdns then asks 127.0.0.1, as the C library does.
            if ![0, 1, 6].contains(result) { problems.append("\(resolvConf) could not be read (evdns error \(result))") }
        } else {
            for server in servers {
                let result = evdns_base_nameserver_ip_add(dns, server)
                // 3: listed twice, which evdns ignores.
                if result != 0 && result != 3 { problems.append("name server \(server) cannot be used (evdns error \(result))") }
            }
        }
        self.problems = problems
        guard evdns_base_count_nameservers(dns) > 0 else {
            evdns_base_free(dns, 0)
            throw SystemError("no usable name server: \(problems.joined(separator: "; "))", errno: EINVAL)
        }
        let microseconds = max(1_000, timeout.components.seconds * 1_000_000 + timeout.components.attoseconds / 1_000_000_000_000)
        let seconds = "\(microseconds / 1_000_000).\(String(microseconds % 1_000_000 + 1_000_000).dropFirst())"
        evdns_base_set_option(dns, "timeout:", seconds)
        evdns_base_set_option(dns, "attempts:", String(max(1, attempts)))
        // The 0x20 trick (random letter case in the question, checked in the answer) off: RFC 1035 does not
        // require a server to echo the question's case, and evdns rejects every answer of one that does not.
        evdns_base_set_option(dns, "randomize-case:", "0")
        self.dns = dns
    }

    deinit { close() }

    /// Where evdns's own messages go (a name server marked down or back up, an address it cannot parse).
    /// evdns has one log for the whole process, so this is process-wide; with none (the default) libevent
    /// writes them to stderr. Set it on the thread that runs the resolvers.
    public static func setLogHandler(_ handler: ((_ isWarning: Bool, _ message: String) -> Void)?) {
        logHandler = handler
        evdns_set_log_fn(handler == nil ? nil : { isWarning, message in
            guard let message else { return }
            DNSResolver.logHandler?(isWarning != 0, String(cString: message))
        })
    }

    nonisolated(unsafe) private static var logHandler: ((Bool, String) -> Void)?

    /// Looks up the IPv4 addresses of `name`.
    @discardableResult
    public func resolveIPv4(_ name: String, completion: @escaping Completion) -> DNSLookup {
        resolve(name, ipv6: false, completion: completion)
    }

    /// Looks up the IPv6 addresses of `name`.
    @discardableResult
    public func resolveIPv6(_ name: String, completion: @escaping Completion) -> DNSLookup {
        resolve(name, ipv6: true, completion: completion)
    }

    /// Frees evdns and its sockets. Pending lookups never complete; the resolver answers no more.
    public func close() {
        let lookups = pending.values
        pending = [:]
        for lookup in lookups { lookup.silence() }
        // With fail_requests set, evdns ends every query still in flight with "shut down", whose callback
        // releases its lookup.
        if let dns { evdns_base_free(dns, 1) }
        dns = nil
    }

    private func resolve(_ name: String, ipv6: Bool, completion: @escaping Completion) -> DNSLookup {
        let lookup = DNSLookup(resolver: self, ipv6: ipv6, completion: completion)
        pending[ObjectIdentifier(lookup)] = lookup
        if let known = Self.knownAnswer(name, ipv6: ipv6) {
            lookup.deliverSoon(.success(known), base: base)
            return lookup
        }
        guard let dns else {
            lookup.deliverSoon(.failure(.other("the resolver is closed")), base: base)
            return lookup
        }
        // One retain held for evdns, given back by the callback, which evdns makes exactly once per query.
        let context = Unmanaged.passRetained(lookup).toOpaque()
        let callback: evdns_callback_type = { result, _, count, ttl, addresses, context in
            let lookup = Unmanaged<DNSLookup>.fromOpaque(context!).takeRetainedValue()
            lookup.answered(result: result, count: Int(count), ttl: Int(ttl), addresses: addresses)
        }
        let flags = Int32(DNS_QUERY_NO_SEARCH)
        let handle = ipv6 ? evdns_base_resolve_ipv6(dns, name, flags, callback, context)
            : evdns_base_resolve_ipv4(dns, name, flags, callback, context)
        guard let handle else {
            Unmanaged<DNSLookup>.fromOpaque(context).release()
            lookup.deliverSoon(.failure(.other("'\(name)' cannot be looked up")), base: base)
            return lookup
        }
        lookup.handle = handle
        return lookup
    }

    fileprivate func finished(_ lookup: DNSLookup) {
        pending.removeValue(forKey: ObjectIdentifier(lookup))
    }

    fileprivate func cancel(_ lookup: DNSLookup) {
        pending.removeValue(forKey: ObjectIdentifier(lookup))
        // evdns then calls back with "cancelled" (or with the answer it already had), which only releases
        // the lookup; the handle is evdns's until then, so it is not touched again.
        if let handle = lookup.handle, let dns { evdns_cancel_request(dns, handle) }
        lookup.silence()
    }

    /// `localhost` and IP literals, answered without a query.
    static func knownAnswer(_ name: String, ipv6: Bool) -> Answer? {
        let host = name.hasSuffix(".") ? String(name.dropLast()) : name
        if host.lowercased() == "localhost" {
            return Answer(addresses: [ipv6 ? [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1] : [127, 0, 0, 1]], ttlSeconds: 86_400)
        }
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            return Answer(addresses: ipv6 ? [] : [withUnsafeBytes(of: v4) { Array($0) }], ttlSeconds: 86_400)
        }
        if inet_pton(AF_INET6, host, &v6) == 1 {
            return Answer(addresses: ipv6 ? [withUnsafeBytes(of: v6) { Array($0) }] : [], ttlSeconds: 86_400)
        }
        return nil
    }

    /// What an evdns result code means.
    static func outcome(result: Int32, count: Int, ttl: Int, addresses: UnsafeMutableRawPointer?,
                        ipv6: Bool) -> Result<Answer, Failure> {
        switch result {
        case DNS_ERR_NONE:
            let size = ipv6 ? 16 : 4
            guard let addresses, count > 0 else { return .success(Answer(addresses: [], ttlSeconds: max(0, ttl))) }
            let raw = UnsafeRawBufferPointer(start: addresses, count: count * size)
            let list = (0..<count).map { Array(raw[($0 * size)..<($0 * size + size)]) }
            return .success(Answer(addresses: list, ttlSeconds: max(0, ttl)))
        case DNS_ERR_NODATA:
            return .success(Answer(addresses: [], ttlSeconds: max(0, ttl)))
        case DNS_ERR_NOTEXIST:
            return .failure(.noSuchName)
        case DNS_ERR_TIMEOUT:
            return .failure(.timeout)
        case DNS_ERR_SERVERFAILED, DNS_ERR_REFUSED, DNS_ERR_NOTIMPL, DNS_ERR_FORMAT:
            return .failure(.serverFailure(String(cString: evdns_err_to_string(result))))
        default:
            return .failure(.other(String(cString: evdns_err_to_string(result))))
        }
    }
}

/// One lookup in progress; `cancel()` makes sure its completion is never called.
public final class DNSLookup {
    fileprivate weak var resolver: DNSResolver?
    /// evdns's request, while evdns has not called back.
    fileprivate var handle: OpaquePointer?
    /// The event that delivers an answer known without a query.
    private var soon: OpaquePointer?
    private var soonResult: Result<DNSResolver.Answer, DNSResolver.Failure>?
    private var completion: DNSResolver.Completion?

    private let ipv6: Bool

    fileprivate init(resolver: DNSResolver, ipv6: Bool, completion: @escaping DNSResolver.Completion) {
        self.resolver = resolver
        self.ipv6 = ipv6
        self.completion = completion
    }

    deinit { freeEvent(soon) }

    /// Whether the completion is still to come.
    public var isPending: Bool { completion != nil }

    /// The completion will not be called. Safe to call at any time, and more than once.
    public func cancel() {
        if let resolver { resolver.cancel(self) } else { silence() }
    }

    fileprivate func silence() {
        completion = nil
        handle = nil
        freeEvent(soon)
        soon = nil
    }

    /// Completes on the next turn of the loop, never from inside the call that started the lookup.
    fileprivate func deliverSoon(_ result: Result<DNSResolver.Answer, DNSResolver.Failure>, base: EventBase) {
        soonResult = result
        // The resolver's pending table holds the lookup until the event fires or is freed.
        soon = event_new(base.base, -1, 0, { _, _, context in
            Unmanaged<DNSLookup>.fromOpaque(context!).takeUnretainedValue().deliver()
        }, Unmanaged.passUnretained(self).toOpaque())
        var now = timeval(tv_sec: 0, tv_usec: 0)
        event_add(soon, &now)
    }

    private func deliver() {
        freeEvent(soon)
        soon = nil
        guard let result = soonResult else { return }
        soonResult = nil
        complete(result)
    }

    /// evdns's one callback for this query.
    fileprivate func answered(result: Int32, count: Int, ttl: Int, addresses: UnsafeMutableRawPointer?) {
        handle = nil
        guard completion != nil, result != DNS_ERR_CANCEL, result != DNS_ERR_SHUTDOWN else { return }
        complete(DNSResolver.outcome(result: result, count: count, ttl: ttl, addresses: addresses, ipv6: ipv6))
    }

    private func complete(_ result: Result<DNSResolver.Answer, DNSResolver.Failure>) {
        guard let completion else { return }
        self.completion = nil
        resolver?.finished(self)
        completion(result)
    }
}
