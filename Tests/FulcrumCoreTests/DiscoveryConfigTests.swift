import FulcrumCore
import Testing

private func load(_ yaml: String) throws -> FulcrumConfig { try ConfigLoader.load(text: yaml, file: "test.yaml") }

private func diagnostics(_ yaml: String) -> [ConfigDiagnostic] {
    do {
        _ = try load(yaml)
        Issue.record("expected the configuration to be rejected")
        return []
    } catch let error as ConfigError {
        return error.diagnostics
    } catch {
        Issue.record("unexpected \(error)")
        return []
    }
}

private func pool(_ body: String) -> String {
    """
    listeners:
      - {name: a, listen: 127.0.0.1:7000, pool: p}
    pools:
      p:
    \(body.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))
    """
}

@Suite struct DiscoveryConfigTests {
    @Test func hostNamesSRVAndEtcdLoadWithTheirSettings() throws {
        let config = try load("""
        dns: {servers: ["127.0.0.1:5353", "::1"], family: both, min_ttl: 2s, max_ttl: 1m, timeout: 500ms}
        listeners:
          - {name: a, listen: 127.0.0.1:7000, pool: names}
          - {name: b, listen: 127.0.0.1:7001, pool: srv}
          - {name: c, listen: 127.0.0.1:7002, pool: etcd}
        pools:
          names:
            backends:
              - {address: redis.internal:6379, weight: 3, backup: true, max_connections: 10}
              - localhost:6380
          srv:
            discovery: {srv: _redis._tcp.cache.internal, max_backends: 20}
          etcd:
            backends: [127.0.0.1:6390]
            discovery:
              etcd: {endpoints: ["http://127.0.0.1:2379", "http://localhost:22379/"], prefix: /fulcrum/pools/redis/}
        """)
        #expect(config.dns == FulcrumConfig.DNS(servers: [.ipv4((127, 0, 0, 1), port: 5353), .ipv6([UInt8](repeating: 0, count: 15) + [1], port: 53)],
                                               family: .both, minTTL: .seconds(2), maxTTL: .seconds(60), timeout: .milliseconds(500)))
        let names = config.pool(named: "names")!
        #expect(names.names == [FulcrumConfig.NamedBackend(host: "redis.internal", port: 6379, weight: 3, priority: 1, maxConnections: 10)])
        #expect(names.backends.map(\.address) == [.ipv4((127, 0, 0, 1), port: 6380)], "localhost stays 127.0.0.1")
        #expect(names.isDiscovered && names.discovery.maxBackends == FulcrumConfig.Discovery.defaultMaxBackends)
        let srv = config.pool(named: "srv")!
        #expect(srv.backends.isEmpty && srv.discovery == FulcrumConfig.Discovery(source: .srv("_redis._tcp.cache.internal"), maxBackends: 20))
        let etcd = config.pool(named: "etcd")!
        #expect(etcd.discovery.source == .etcd(.init(endpoints: [.ipv4((127, 0, 0, 1), port: 2379), .ipv4((127, 0, 0, 1), port: 22379)],
                                                       prefix: "/fulcrum/pools/redis/")))
        #expect(etcd.backends.count == 1, "static backends stay beside a source")
    }

    @Test func aPoolWithNeitherBackendsNorASourceIsStillRejected() {
        let found = diagnostics(pool("balance: random"))
        #expect(found.contains { $0.keyPath == "pools.p.backends" && $0.message.contains("missing required key 'backends'") })
        #expect(found.first?.hint?.contains("discovery source") == true)
    }

    @Test func anEmptyBackendListIsFineBesideASource() throws {
        let config = try load(pool("backends: []\ndiscovery: {srv: _x._tcp.example.org}"))
        #expect(config.pools[0].backends.isEmpty)
    }

    @Test func etcdOverTLSOrWithCredentialsSaysItIsNotSupportedYet() {
        let tls = diagnostics(pool("discovery: {etcd: {endpoints: [\"https://127.0.0.1:2379\"], prefix: /x/}}"))
        #expect(tls.first?.keyPath == "pools.p.discovery.etcd.endpoints[0]" && tls.first?.message == "TLS to etcd is not supported yet")
        let auth = diagnostics(pool("discovery: {etcd: {endpoints: [\"http://root:pw@127.0.0.1:2379\"], prefix: /x/}}"))
        #expect(auth.first?.message == "etcd authentication is not supported yet")
        let host = diagnostics(pool("discovery: {etcd: {endpoints: [\"http://etcd.internal:2379\"], prefix: /x/}}"))
        #expect(host.first?.message.contains("is a host name") == true)
        let missing = diagnostics(pool("discovery: {etcd: {endpoints: [\"http://127.0.0.1:2379\"]}}"))
        #expect(missing.map(\.keyPath) == ["pools.p.discovery.etcd.prefix"], "one error, not a second about backends")
        let slash = diagnostics(pool("discovery: {etcd: {endpoints: [\"http://127.0.0.1:2379\"], prefix: /redis}}"))
        #expect(slash.first?.message.contains("does not end with '/'") == true)
    }

    @Test func oneSourcePerPool() {
        let found = diagnostics(pool("discovery: {srv: _a._tcp.x, etcd: {endpoints: [\"http://127.0.0.1:2379\"], prefix: /x/}}"))
        #expect(found.first?.message == "a pool names one discovery source, got srv and etcd")
    }

    @Test(arguments: ["redis.internal", "bad_host!:6379", "a..b:6379", "redis.internal:0", "10.0.0.256:80", "1.2.3:80", "-x:80"])
    func aBadHostNameEntryNamesTheKeyAndTheFix(_ address: String) {
        let found = diagnostics(pool("backends: [\"\(address)\"]"))
        #expect(found.first?.keyPath == "pools.p.backends[0].address", "\(found)")
        #expect(found.first?.hint != nil)
    }

    @Test func anSRVNameMustNameAServiceAndProtocol() {
        let found = diagnostics(pool("discovery: {srv: redis.internal}"))
        #expect(found.first?.message == "'redis.internal' is not an SRV record name")
        #expect(found.first?.hint?.contains("_redis._tcp") == true)
    }

    @Test func dnsSettingsAreValidated() {
        let found = diagnostics("dns: {family: ipv5, min_ttl: 10m, max_ttl: 1m, servers: [dns.google]}\n" + pool("backends: [127.0.0.1:1]"))
        #expect(found.contains { $0.keyPath == "dns.family" && $0.hint == "use ipv4, ipv6 or both" })
        #expect(found.contains { $0.keyPath == "dns.min_ttl" && $0.message.contains("is above max_ttl") })
        #expect(found.contains { $0.keyPath == "dns.servers[0]" })
    }

    @Test func aHostNameListedTwiceIsReported() {
        let found = diagnostics(pool("backends: [a.example:1, a.example:1]"))
        #expect(found.first?.message.contains("already listed") == true)
    }

    @Test func maxBackendsHasBounds() {
        let found = diagnostics(pool("discovery: {srv: _a._tcp.x, max_backends: 0}"))
        #expect(found.first?.keyPath == "pools.p.discovery.max_backends")
    }

    @Test func aReloadThatChangesDiscoveryIsADiffOfThePool() throws {
        let before = try load(pool("discovery: {srv: _a._tcp.x}"))
        let after = try load(pool("discovery: {srv: _b._tcp.x}"))
        let changes = ConfigDiff(from: before, to: after).changes.map(\.description)
        #expect(changes.contains { $0.contains("discovery") }, "\(changes)")
    }
}
