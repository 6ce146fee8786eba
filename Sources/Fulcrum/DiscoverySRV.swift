import EventLoop
import FulcrumCore
import Logging

/// A pool's SRV source (`discovery: {srv: _redis._tcp.cache.internal}`): asks for the SRV records over UDP
/// (`DNSQuery`), resolves each target to its addresses (from the answer's additional section when it has
/// them, else through evdns, per `dns.family`), and reports one backend per target address and port:
/// priorities become tiers (the lowest 0, the next 1, ...), weights are kept within 1...1000 (0 becomes 1)
/// (`DNSRecords.backends`). Asks again when the least TTL of the SRV and address records (clamped to
/// `min_ttl ... max_ttl`) ends.
///
/// No SRV records (NOERROR without answers, or only the "." target) is an empty snapshot. NXDOMAIN, a
/// dead or failing server, or a target that cannot be resolved for another reason than NXDOMAIN is
/// `.failed`: the pool keeps its last set, and the source retries after 1 s, doubling up to 30 s. A target
/// that does not exist (NXDOMAIN) only lists no backends. An answer cut short (TC) is used as far as it
/// arrived, with a warning: there is no TCP fallback (queries announce 1232-byte UDP answers with EDNS(0),
/// room for several dozen records).
final class SRVSource: DiscoverySource {
    let name: String
    private let service: DNSService
    private let srvName: String
    private let settings: FulcrumConfig.DNS
    private var logger: Logger
    private let report: DiscoverySink
    private var timer: Timer?
    private var backoff = DNSRetryBackoff()
    private var stopped = false
    private var warnedTruncated = false
    // The round in progress: the query, then the targets' lookups.
    private var query: DNSQuery?
    private var lookups: [String: HostLookup] = [:]
    private var targets: [DNSRecords.SRVTarget] = []
    private var ttl = Int.max
    private var truncated = false

    init(service: DNSService, name: String, settings: FulcrumConfig.DNS, logger: Logger, report: @escaping DiscoverySink) {
        self.name = "srv \(name)"
        self.service = service
        srvName = name
        self.settings = settings
        self.logger = logger
        self.report = report
        timer = Timer(base: service.base) { [weak self] in self?.resolve() }
    }

    func start() { resolve() }

    func refresh() { resolve() }

    func stop() {
        stopped = true
        endRound()
        timer?.cancel()
    }

    private func resolve() {
        guard !stopped else { return }
        timer?.cancel()
        endRound()
        query = service.query(srvName, type: .srv) { [weak self] result in self?.answered(result) }
    }

    private func endRound() {
        query?.cancel()
        query = nil
        for lookup in lookups.values { lookup.cancel() }
        lookups = [:]
        targets = []
        ttl = .max
        truncated = false
    }

    private func answered(_ result: Result<DNSMessage, DNSResolver.Failure>) {
        query = nil
        let message: DNSMessage
        switch result {
        case .failure(let failure): return failed("\(srvName): \(DNSNameSource.text(failure, service))")
        case .success(let answer): message = answer
        }
        var records: [DNSMessage.SRV] = []
        for record in message.answers {
            guard case .srv(let srv) = record.data else { continue }
            ttl = min(ttl, record.ttlSeconds)
            records.append(srv)
        }
        truncated = message.header.isTruncated
        if truncated {
            if records.isEmpty { return failed("\(srvName): the answer was truncated (TC) and TCP fallback is not supported") }
            if !warnedTruncated {
                warnedTruncated = true
                logger.warning("\(name): the answer was truncated (TC); TCP fallback is not supported, using the \(records.count) SRV records that arrived")
            }
        }
        if records.isEmpty {
            // A negative answer lasts as long as the zone's SOA says, when the server sent it.
            for record in message.authority {
                if case .soa(let minimum) = record.data { ttl = min(ttl, record.ttlSeconds, Int(minimum)) }
            }
        }
        // "." means the service is decidedly not offered here (RFC 2782).
        for srv in records where !srv.target.isEmpty {
            guard Self.isHostName(srv.target) else {
                logger.warning("\(name): ignoring the SRV target '\(srv.target)', which is not a host name")
                continue
            }
            targets.append(DNSRecords.SRVTarget(priority: srv.priority, weight: srv.weight, port: srv.port,
                                                target: srv.target, addresses: []))
        }
        var pending: [String: FulcrumConfig.DNS.Family] = [:]
        for key in Set(targets.map { $0.target.lowercased() }) {
            var found: [SocketAddress] = []
            var foundA = false, foundAAAA = false
            for record in message.additional where DNSMessage.sameName(record.name, key) {
                switch record.data {
                case .a(let bytes) where settings.family != .ipv6:
                    foundA = true
                    found += DNSRecords.address(bytes, port: 0).map { [$0] } ?? []
                    ttl = min(ttl, record.ttlSeconds)
                case .aaaa(let bytes) where settings.family != .ipv4:
                    foundAAAA = true
                    found += DNSRecords.address(bytes, port: 0).map { [$0] } ?? []
                    ttl = min(ttl, record.ttlSeconds)
                default:
                    break
                }
            }
            assign(found, to: key)
            let missing: FulcrumConfig.DNS.Family? = switch settings.family {
            case .ipv4: foundA ? nil : .ipv4
            case .ipv6: foundAAAA ? nil : .ipv6
            case .both: foundA && foundAAAA ? nil : foundA ? .ipv6 : foundAAAA ? .ipv4 : .both
            }
            if let missing { pending[key] = missing }
        }
        if pending.isEmpty { return finishRound() }
        for (key, family) in pending {
            lookups[key] = service.lookUp(key, family: family) { [weak self] result in self?.resolved(key, result) }
        }
    }

    private func resolved(_ key: String, _ result: Result<HostAnswer, DNSResolver.Failure>) {
        lookups.removeValue(forKey: key)
        switch result {
        case .success(let answer):
            if !answer.addresses.isEmpty { ttl = min(ttl, answer.ttlSeconds) }
            assign(answer.addresses, to: key)
        case .failure(.noSuchName):
            logger.debug("\(name): the SRV target \(key) does not exist")
        case .failure(let failure):
            // A partial set would remove the backends of the target that could not be read.
            endRound()
            return failed("\(srvName): target \(key): \(DNSNameSource.text(failure, service))")
        }
        if lookups.isEmpty { finishRound() }
    }

    private func assign(_ addresses: [SocketAddress], to key: String) {
        for index in targets.indices where targets[index].target.lowercased() == key {
            targets[index].addresses += addresses
        }
    }

    private func finishRound() {
        let backends = DNSRecords.backends(targets)
        let recordCount = targets.count
        let recordTTL = ttl == .max ? 0 : ttl
        let wasTruncated = truncated
        endRound()
        guard !stopped else { return }
        backoff.reset()
        let next = settings.clamp(ttlSeconds: recordTTL)
        timer?.schedule(after: next)
        var detail = "\(recordCount) SRV record\(recordCount == 1 ? "" : "s"), ttl \(recordTTL)s"
        if next != .seconds(recordTTL) { detail += ", next in \(next.configText)" }
        if wasTruncated { detail += ", truncated answer" }
        report(.snapshot(backends, detail: detail))
    }

    private func failed(_ message: String) {
        endRound()
        guard !stopped else { return }
        let wait = backoff.next(cap: settings.maxTTL)
        timer?.schedule(after: wait)
        report(.failed(message, retryIn: wait))
    }

    /// Letters, digits, '-', '_' and dots: what evdns can be asked for.
    static func isHostName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 253 && name.utf8.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E
        }
    }
}
