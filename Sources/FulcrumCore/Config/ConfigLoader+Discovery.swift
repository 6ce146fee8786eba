import Yams

extension ConfigLoader {
    static let dnsKeys = ["servers", "family", "min_ttl", "max_ttl", "timeout"]
    static let discoveryKeys = ["srv", "etcd", "max_backends"]
    static let etcdKeys = ["endpoints", "prefix"]

    /// `dns: {servers, family, min_ttl, max_ttl, timeout}`.
    static func buildDNS(_ node: Node, _ r: inout YAMLReader) -> FulcrumConfig.DNS {
        var dns = FulcrumConfig.DNS()
        guard let f = r.fields(node, "dns", known: dnsKeys) else { return dns }
        if let node = f["servers"], let items = r.sequence(node, f.path("servers"), of: "name server addresses") {
            for (index, item) in items.enumerated() {
                let path = "\(f.path("servers"))[\(index)]"
                guard let text = r.scalar(item, path, expecting: "a name server address, e.g. 127.0.0.1:53") else { continue }
                // A bare IP means port 53.
                let bare = text.hasPrefix("[") && text.hasSuffix("]") ? String(text.dropFirst().dropLast()) : text
                let withPort = ConfigValue.parseIPv4(bare) != nil ? "\(bare):53"
                    : ConfigValue.parseIPv6(bare) != nil ? "[\(bare)]:53" : text
                switch ConfigValue.address(withPort) {
                case .success(let address) where address.port != 0:
                    dns.servers.append(address)
                default:
                    r.report(item, path, "'\(text)' is not a name server address",
                             hint: "use an IP address with an optional port, e.g. 127.0.0.1:53 or \"[::1]:53\"")
                }
            }
        }
        if let node = f["family"], let text = r.scalar(node, f.path("family"), expecting: "ipv4, ipv6 or both") {
            if let family = FulcrumConfig.DNS.Family(rawValue: text) {
                dns.family = family
            } else {
                r.report(node, f.path("family"), "'\(text)' is not an address family", hint: "use ipv4, ipv6 or both")
            }
        }
        if let node = f["min_ttl"], let value = r.duration(node, f.path("min_ttl"), in: ConfigLimits.dnsTTL) { dns.minTTL = value }
        if let node = f["max_ttl"], let value = r.duration(node, f.path("max_ttl"), in: ConfigLimits.dnsTTL) { dns.maxTTL = value }
        if let node = f["timeout"], let value = r.duration(node, f.path("timeout"), in: ConfigLimits.dnsTimeout) { dns.timeout = value }
        if dns.minTTL > dns.maxTTL {
            r.report(f["min_ttl"] ?? f["max_ttl"], f.path("min_ttl"),
                     "min_ttl \(dns.minTTL.configText) is above max_ttl \(dns.maxTTL.configText)",
                     hint: "set min_ttl at or below max_ttl, e.g. min_ttl: 1s, max_ttl: 5m")
        }
        return dns
    }

    /// `discovery: {srv: NAME}` or `discovery: {etcd: {endpoints, prefix}}`, with an optional `max_backends`.
    static func buildDiscovery(_ node: Node, _ path: String, _ r: inout YAMLReader) -> FulcrumConfig.Discovery {
        var discovery = FulcrumConfig.Discovery()
        guard let f = r.fields(node, path, known: discoveryKeys) else { return discovery }
        if let node = f["max_backends"],
           let value = r.integer(node, f.path("max_backends"), in: ConfigLimits.maxDiscoveredBackends) {
            discovery.maxBackends = value
        }
        if f["srv"] != nil && f["etcd"] != nil {
            r.report(f["etcd"], f.path("etcd"), "a pool names one discovery source, got srv and etcd",
                     hint: "keep one of them; list static backends under 'backends:' beside it")
            return discovery
        }
        if let node = f["srv"], let name = r.scalar(node, f.path("srv"), expecting: "an SRV record name") {
            if isHostName(name), name.hasPrefix("_") {
                discovery.source = .srv(name)
            } else {
                r.report(node, f.path("srv"), "'\(name)' is not an SRV record name",
                         hint: "name the service, protocol and domain, e.g. srv: _redis._tcp.cache.internal")
            }
        }
        if let node = f["etcd"], let e = r.fields(node, f.path("etcd"), known: etcdKeys) {
            var endpoints: [SocketAddress] = []
            if let node = e["endpoints"], let items = r.sequence(node, e.path("endpoints"), of: "etcd URLs") {
                for (index, item) in items.enumerated() {
                    let itemPath = "\(e.path("endpoints"))[\(index)]"
                    guard let text = r.scalar(item, itemPath, expecting: "an etcd URL, e.g. http://127.0.0.1:2379") else { continue }
                    if let address = etcdEndpoint(text, itemPath, item, &r) { endpoints.append(address) }
                }
                if items.isEmpty {
                    r.report(node, e.path("endpoints"), "no etcd endpoint listed", hint: "list at least one, e.g. [http://127.0.0.1:2379]")
                }
            } else if e["endpoints"] == nil {
                r.report(e.node, e.path("endpoints"), "missing required key 'endpoints'",
                         hint: "list etcd's client URLs, e.g. endpoints: [http://127.0.0.1:2379]")
            }
            var prefix: String?
            if let node = e["prefix"], let text = r.scalar(node, e.path("prefix"), expecting: "a key prefix") {
                if text.isEmpty || text.contains("\0") {
                    r.report(node, e.path("prefix"), "'\(text)' is not a key prefix",
                             hint: "name the keys' common start, e.g. prefix: /fulcrum/pools/redis/")
                } else if !text.hasSuffix("/") {
                    r.report(node, e.path("prefix"), "the prefix '\(text)' does not end with '/', so it would also match the keys of '\(text)2/' and the like",
                             hint: "end it with '/', e.g. prefix: \(text)/ (fulcrum register writes keys under such a prefix)")
                } else {
                    prefix = text
                }
            } else if e["prefix"] == nil {
                r.report(e.node, e.path("prefix"), "missing required key 'prefix'",
                         hint: "name the keys' common start, e.g. prefix: /fulcrum/pools/redis/")
            }
            if let prefix, !endpoints.isEmpty {
                discovery.source = .etcd(.init(endpoints: endpoints, prefix: prefix))
            }
        }
        return discovery
    }

    /// `http://HOST:PORT` with an IP literal or localhost; https and credentials are refused with the reason.
    private static func etcdEndpoint(_ text: String, _ path: String, _ node: Node, _ r: inout YAMLReader) -> SocketAddress? {
        switch Etcd.endpoint(text) {
        case .success(let address): return address
        case .failure(let error):
            r.report(node, path, error.problem, hint: error.fix)
            return nil
        }
    }

    /// Letters, digits, '-', '_' and dots; labels of 1 to 63 characters; at most 253 in all.
    static func isHostName(_ text: String) -> Bool {
        let name = text.hasSuffix(".") ? String(text.dropLast()) : text
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        // An all-numeric last label is a mistyped IP address (10.0.0.256, 1.2.3), not a name.
        guard let last = labels.last, !last.allSatisfy(\.isNumber) else { return false }
        return labels.allSatisfy { label in
            (1...63).contains(label.utf8.count) && !label.hasPrefix("-") && !label.hasSuffix("-")
                && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
        }
    }
}
