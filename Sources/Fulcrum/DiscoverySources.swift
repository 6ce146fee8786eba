import EventLoop
import FulcrumCore
import Logging

/// Makes the discovery runner's sources. The DNS sources share one `DNSService` for the `dns:` settings
/// they run with; when a reload changes `dns:`, the runner stops every DNS source first (their specs
/// changed), and the first new one closes the old service and opens a new one.
final class DiscoverySources {
    private let base: EventBase
    private let logger: Logger
    private var dns: DNSService?

    init(base: EventBase, logger: Logger) {
        self.base = base
        self.logger = logger
    }

    func make(_ spec: DiscoverySpec, report: @escaping DiscoverySink) -> DiscoverySource? {
        switch spec.kind {
        case .name(let name):
            let settings = spec.dns ?? FulcrumConfig.DNS()
            return DNSNameSource(service: service(settings), name: name, settings: settings, logger: logger, report: report)
        case .srv(let name):
            let settings = spec.dns ?? FulcrumConfig.DNS()
            return SRVSource(service: service(settings), name: name, settings: settings, logger: logger, report: report)
        case .etcd(let etcd):
            return EtcdSource(base: base, settings: etcd, logger: logger, report: report)
        }
    }

    private func service(_ settings: FulcrumConfig.DNS) -> DNSService {
        if let dns, dns.settings == settings, !dns.closed { return dns }
        dns?.close()
        let fresh = DNSService(base: base, settings: settings, logger: logger)
        dns = fresh
        return fresh
    }

    func close() {
        dns?.close()
        dns = nil
    }
}
