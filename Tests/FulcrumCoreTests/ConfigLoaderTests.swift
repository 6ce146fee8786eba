import FulcrumCore
import Testing

/// Loads `yaml` and returns its diagnostics, failing the test if it loads cleanly.
private func diagnostics(_ yaml: String) -> [ConfigDiagnostic] {
    do {
        _ = try ConfigLoader.load(text: yaml, file: "test.yaml")
        Issue.record("expected the configuration to be rejected")
        return []
    } catch {
        return error.diagnostics
    }
}

/// A valid pool section for error tests that are about the listeners.
private let onePool = """
pools:
  app:
    backends:
      - address: 127.0.0.1:9001
"""

@Suite struct ConfigLoaderTests {
    @Test func validFileRoundTripsToTypedConfig() throws {
        let yaml = """
        workers: 4
        drain_timeout: 45s
        buffer_size: 64KiB
        listeners:
          - name: redis
            listen: 127.0.0.1:7000
            pool: redis
          - name: v6
            listen: "[::1]:7001"
            pool: redis
            backlog: 128
        pools:
          redis:
            backends:
              - address: 127.0.0.1:6379
                weight: 2
              - address: 127.0.0.1:6380
              - "[::1]:6381"
            connect_timeout: 250ms
            idle_timeout: 5m
            retries: 1
        """
        let config = try ConfigLoader.load(text: yaml, file: "ok.yaml")
        let expected = FulcrumConfig(
            workers: .count(4), drainTimeout: .seconds(45), bufferSize: 65536,
            listeners: [
                .init(name: "redis", address: .ipv4((127, 0, 0, 1), port: 7000), pool: "redis"),
                .init(name: "v6", address: .ipv6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], port: 7001),
                      pool: "redis", backlog: 128),
            ],
            pools: [
                .init(name: "redis", backends: [
                    .init(address: .ipv4((127, 0, 0, 1), port: 6379), weight: 2),
                    .init(address: .ipv4((127, 0, 0, 1), port: 6380)),
                    .init(address: .ipv6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], port: 6381)),
                ], balance: .roundRobin, connectTimeout: .milliseconds(250), idleTimeout: .seconds(300), retries: 1),
            ])
        #expect(config == expected)
        #expect(config.listeners[1].address.description == "[::1]:7001")
    }

    @Test func defaultsApplyWhenKeysAreOmitted() throws {
        let config = try ConfigLoader.load(text: """
        listeners:
          - name: a
            listen: 127.0.0.1:7000
            pool: app
        \(onePool)
        """, file: "defaults.yaml")
        #expect(config.workers == .auto)
        #expect(config.drainTimeout == .seconds(30))
        #expect(config.bufferSize == 256 << 10)
        let pool = try #require(config.pool(named: "app"))
        #expect(pool.connectTimeout == .seconds(1))
        #expect(pool.idleTimeout == .seconds(600))
        #expect(pool.retries == 2)
        #expect(pool.balance == .roundRobin)
        #expect(pool.backends == [.init(address: .ipv4((127, 0, 0, 1), port: 9001), weight: 1)])
    }

    @Test func unknownKeyNamesTheKeyTheLineAndTheLikelyFix() {
        let found = diagnostics("""
        listeners:
          - name: a
            listen: 127.0.0.1:7000
            pool: app
        pools:
          app:
            backends:
              - address: 127.0.0.1:9001
            conect_timeout: 1s
        """)
        #expect(found.count == 1)
        #expect(found.first?.line == 9)
        #expect(found.first?.keyPath == "pools.app.conect_timeout")
        #expect(found.first?.description.contains("unknown key 'conect_timeout'") == true)
        #expect(found.first?.description.contains("did you mean 'connect_timeout'?") == true)
    }

    @Test func badDurationSaysWhatADurationLooksLike() {
        let found = diagnostics("""
        listeners:
          - name: a
            listen: 127.0.0.1:7000
            pool: app
        pools:
          app:
            backends: [127.0.0.1:9001]
            idle_timeout: 10 minutes
        """)
        #expect(found.map(\.line) == [8])
        #expect(found.first?.keyPath == "pools.app.idle_timeout")
        #expect(found.first?.message == "'10 minutes' is not a duration")
        #expect(found.first?.hint?.contains("250ms, 2s, 5m") == true)
    }

    @Test func listenerNamingAnUndefinedPool() {
        let found = diagnostics("""
        listeners:
          - name: a
            listen: 127.0.0.1:7000
            pool: cache
        \(onePool)
        """)
        #expect(found.map(\.line) == [4])
        #expect(found.first?.keyPath == "listeners[0].pool")
        #expect(found.first?.message == "pool 'cache' is not defined")
        #expect(found.first?.hint?.contains("app") == true)
    }

    @Test func duplicateListenerAddressPointsAtTheFirstUse() {
        let found = diagnostics("""
        listeners:
          - name: a
            listen: 127.0.0.1:7000
            pool: app
          - name: b
            listen: 127.0.0.1:7000
            pool: app
        \(onePool)
        """)
        #expect(found.map(\.line) == [6])
        #expect(found.first?.keyPath == "listeners[1].listen")
        #expect(found.first?.message.contains("already used by the listener on line 3") == true)
    }

    @Test func aWildcardListenerBesideASpecificOneOnTheSamePortIsRejected() {
        let found = diagnostics("""
        listeners:
          - name: any
            listen: 0.0.0.0:7000
            pool: app
          - name: local
            listen: 127.0.0.1:7000
            pool: app
          - name: v6local
            listen: "[::1]:7001"
            pool: app
          - name: v6any
            listen: "[::]:7001"
            pool: app
          - name: other-port
            listen: 127.0.0.1:7002
            pool: app
        \(onePool)
        """)
        #expect(found.map(\.line) == [6, 12])
        #expect(found.map(\.keyPath) == ["listeners[1].listen", "listeners[3].listen"])
        #expect(found.first?.message == "address 127.0.0.1:7000 overlaps 0.0.0.0:7000 of the listener on line 3: 0.0.0.0:7000 already takes every address of its family on port 7000")
        #expect(found.first?.hint == "listen on 0.0.0.0:7000 once, or give the listeners different ports")
        #expect(found.last?.message.contains("overlaps [::1]:7001 of the listener on line 9: [::]:7001 already takes") == true)
    }

    @Test func ipv6AndIPv4WildcardsOnOnePortListenSideBySide() throws {
        // IPv6 listeners are IPv6-only: [::] does not take IPv4 connections, so this is dual-stack.
        let config = try ConfigLoader.load(text: """
        listeners:
          - name: v4
            listen: 0.0.0.0:7000
            pool: app
          - name: v6
            listen: "[::]:7000"
            pool: app
        \(onePool)
        """, file: "test.yaml")
        #expect(config.listeners.count == 2)
    }

    @Test func duplicateListenerName() {
        let found = diagnostics("""
        listeners:
          - name: a
            listen: 127.0.0.1:7000
            pool: app
          - name: a
            listen: 127.0.0.1:7001
            pool: app
        \(onePool)
        """)
        #expect(found.map(\.line) == [5])
        #expect(found.first?.message.contains("listener name 'a' is already used on line 2") == true)
    }

    @Test func portOutOfRange() {
        let found = diagnostics("""
        listeners:
          - name: a
            listen: 127.0.0.1:70000
            pool: app
        pools:
          app:
            backends:
              - address: 127.0.0.1:0
        """)
        #expect(found.map(\.line) == [3, 8])
        #expect(found[0].message == "port 70000 is out of range")
        #expect(found[0].hint == "use a port from 1 to 65535")
        #expect(found[1].message == "port 0 is not a valid backend port")
    }

    @Test func zeroBackends() {
        let found = diagnostics("""
        listeners:
          - name: a
            listen: 127.0.0.1:7000
            pool: app
        pools:
          app:
            backends: []
        """)
        #expect(found.map(\.line) == [7])
        #expect(found.first?.keyPath == "pools.app.backends")
        #expect(found.first?.message == "the pool has zero backends")
    }

    @Test(arguments: ["0", "-1", "1001", "heavy"])
    func weightMustBePositive(weight: String) {
        let found = diagnostics("""
        listeners:
          - name: a
            listen: 127.0.0.1:7000
            pool: app
        pools:
          app:
            backends:
              - address: 127.0.0.1:9001
                weight: \(weight)
        """)
        #expect(found.map(\.line) == [9])
        #expect(found.first?.keyPath == "pools.app.backends[0].weight")
        #expect(found.first?.hint?.contains("an integer from 1 to 1000") == true)
    }

    @Test func theWeightErrorOffersTheDisabledState() {
        let found = diagnostics("""
        listeners: [{name: a, listen: 127.0.0.1:7000, pool: app}]
        pools:
          app:
            backends: [{address: 127.0.0.1:9001, weight: 0}]
        """)
        #expect(found.map(\.line) == [4])
        #expect(found.first?.hint == "use an integer from 1 to 1000; to take a backend out of rotation, "
            + "set state: disabled or drain, or remove it")
    }

    // MARK: - IPv6 addresses written without quotes

    /// `[::1]:7000` unquoted is a YAML syntax error: YAML reads `[` as the start of a list.
    @Test(arguments: [
        ("  - {name: a, listen: [::1]:7000, pool: app}", "write listen: '[::1]:7000'"),
        ("  - name: a\n    listen: [::1]:7000\n    pool: app", "write listen: '[::1]:7000'"),
        ("  - name: a\n    listen: [2001:db8::1]:7000\n    pool: app", "write listen: '[2001:db8::1]:7000'"),
        ("  - name: a\n    listen: [::ffff:10.0.0.1]:7000\n    pool: app", "write listen: '[::ffff:10.0.0.1]:7000'"),
    ])
    func anUnquotedIPv6ListenAddressSaysToQuoteIt(listener: String, hint: String) throws {
        let found = diagnostics("listeners:\n\(listener)\n\(onePool)")
        let d = try #require(found.first)
        #expect(found.count == 1)
        #expect(d.line == (listener.hasPrefix("  - {") ? 2 : 3))
        #expect(d.message == "an IPv6 address must be quoted, or YAML reads its brackets as a list")
        #expect(d.hint == hint)
    }

    @Test func anUnquotedIPv6BackendSaysToQuoteIt() throws {
        let found = diagnostics("""
        listeners: [{name: a, listen: 127.0.0.1:7000, pool: app}]
        pools:
          app:
            backends:
              - 127.0.0.1:9001
              - address: [::1]:9002
        """)
        #expect(found.map(\.line) == [6])
        #expect(found.first?.hint == "write address: '[::1]:9002'")
    }

    /// Without a port the brackets parse as a one-item list; the error still says to quote the address.
    @Test func anUnquotedIPv6AddressThatParsesAsAListSaysToQuoteIt() throws {
        let found = diagnostics("""
        listeners:
          - name: a
            listen: [2001:db8::1]
            pool: app
        pools:
          app:
            backends:
              - [2001:db8::2]
              - {address: [fe80::1]}
        """)
        #expect(found.map(\.line) == [3, 8, 9])
        #expect(found.allSatisfy { $0.message == "an IPv6 address must be quoted, or YAML reads its brackets as a list" })
        #expect(found.map(\.hint) == ["write it as '[2001:db8::1]:PORT'", "write it as '[2001:db8::2]:PORT'",
                                       "write it as '[fe80::1]:PORT'"])
        #expect(found.map(\.keyPath) == ["listeners[0].listen", "pools.app.backends[0]", "pools.app.backends[1].address"])
    }

    @Test func quotedIPv6AddressesLoad() throws {
        let config = try ConfigLoader.load(text: """
        listeners: [{name: a, listen: '[::1]:7000', pool: app}]
        pools:
          app:
            backends: ['[::1]:9001', {address: "[2001:db8::1]:9002"}]
        """, file: "v6.yaml")
        #expect(config.listeners[0].address.description == "[::1]:7000")
        #expect(config.pools[0].backends.map(\.address.description) == ["[::1]:9001", "[2001:db8::1]:9002"])
    }

    // MARK: - Syntax errors keep their line

    @Test func aDuplicatedKeyNamesTheSecondOccurrence() {
        let found = diagnostics("""
        listeners: [{name: a, listen: 127.0.0.1:7000, pool: app}]
        pools:
          app:
            backends: [127.0.0.1:9001]
            retries: 1
            idle_timeout: 1m
            retries: 2
        """)
        #expect(found.map(\.line) == [7])
        #expect(found.first?.message == "key 'retries' appears twice in one mapping")
        #expect(found.first?.hint == "keep one of them (the first is on line 5)")
    }

    @Test func nestingPastTheParserLimitIsASyntaxErrorOnItsLine() {
        let found = diagnostics("listeners: []\npools: " + String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000))
        #expect(found.map(\.line) == [2])
        #expect(found.first?.message == "YAML syntax error: nested deeper than 1000 levels")
    }

    @Test func aControlCharacterNamesItsLine() {
        let found = diagnostics("listeners: []\npools:\n  app: {backends: [127.0.0.1:9001]}\n  bad: \u{7}\n")
        #expect(found.map(\.line) == [4])
        #expect(found.first?.message.hasPrefix("YAML syntax error") == true)
    }

    @Test func everyErrorIsReportedAtOnceInFileOrder() {
        let found = diagnostics("""
        workers: many
        drain_timeout: soon
        listeners:
          - name: a
            listen: localhost:99999
            pool: nope
        pools:
          app:
            backends:
              - address: db!internal:5432
                weight: 0
            retries: -1
            balance: fastest
        """)
        #expect(found.map(\.line) == [1, 2, 5, 6, 10, 11, 12, 13])
        #expect(found[0].message == "'many' is not a worker count")
        #expect(found[4].message == "'db!internal:5432' is not a host name and port")
        #expect(found[7].message == "unknown balancing strategy 'fastest'")
        #expect(found[7].hint == "use one of: round_robin, random, least_connections, p2c, peak_ewma, hash, first")
    }

    @Test func missingRequiredKeys() {
        let found = diagnostics("""
        listeners:
          - name: a
        pools:
          app: {}
        """)
        let messages = Set(found.map(\.message))
        #expect(messages == ["missing required key 'listen'", "missing required key 'pool'", "missing required key 'backends'"])
        #expect(found.allSatisfy { $0.line > 0 })
    }

    @Test func yamlSyntaxErrorNamesTheLine() {
        let found = diagnostics("""
        listeners:
          - name: a
            listen: [127.0.0.1:7000
        pools: {}
        """)
        #expect(found.count == 1)
        #expect(found.first?.message.hasPrefix("YAML syntax error") == true)
        #expect((found.first?.line ?? 0) >= 3)
    }

    @Test func wrongShapeIsNamed() {
        let found = diagnostics("""
        listeners:
          name: a
        pools:
          - app
        """)
        #expect(found.map(\.keyPath) == ["listeners", "pools"])
        #expect(found[0].message == "expected a list of listeners, got a mapping")
    }

    @Test func emptyFile() {
        let found = diagnostics("")
        #expect(found.first?.message == "the file is empty")
    }

    @Test func errorTextNamesFileLineKeyAndHint() {
        let text = ConfigError([ConfigDiagnostic(file: "f.yaml", line: 3, keyPath: "pools.a.retries",
                                                 message: "-1 is out of range", hint: "use an integer from 0 to 100")]).description
        #expect(text == "1 configuration error:\n  f.yaml:3: pools.a.retries: -1 is out of range (use an integer from 0 to 100)")
    }

    // MARK: - Strategies, tiers and limits

    @Test func strategiesWithOptionsRoundTrip() throws {
        let config = try ConfigLoader.load(text: """
        listeners:
          - {name: a, listen: 127.0.0.1:7000, pool: latency}
          - {name: b, listen: 127.0.0.1:7001, pool: sticky}
          - {name: c, listen: 127.0.0.1:7002, pool: fill}
        pools:
          latency:
            balance: {strategy: peak_ewma, decay: 5s, default_latency: 20ms}
            slow_start: 30s
            backends: [127.0.0.1:9001, 127.0.0.1:9002]
          sticky:
            balance:
              strategy: hash
              key: ip_port
              hash_balance_factor: 1.25
            backends:
              - address: 127.0.0.1:9001
              - address: 127.0.0.1:9002
                backup: true
              - address: 127.0.0.1:9003
                priority: 2
          fill:
            balance: first
            queue: {size: 10, timeout: 2s}
            backends:
              - {address: 127.0.0.1:9001, max_connections: 100}
              - {address: 127.0.0.1:9002, max_connections: 50}
        """, file: "strategies.yaml")
        let latency = try #require(config.pool(named: "latency"))
        #expect(latency.balance == .peakEWMA(decay: .seconds(5), defaultLatency: .milliseconds(20)))
        #expect(latency.slowStart == .seconds(30))
        let sticky = try #require(config.pool(named: "sticky"))
        #expect(sticky.balance == .hash(key: .ipPort, balanceFactor: 1.25))
        #expect(sticky.backends.map(\.priority) == [0, 1, 2])
        let fill = try #require(config.pool(named: "fill"))
        #expect(fill.balance == .first)
        #expect(fill.queue == FulcrumConfig.Queue(size: 10, timeout: .seconds(2)))
        #expect(fill.backends.map(\.maxConnections) == [100, 50])
    }

    @Test(arguments: ["round_robin", "random", "least_connections", "p2c", "peak_ewma", "hash", "first"])
    func everyStrategyNameIsAccepted(name: String) throws {
        let config = try ConfigLoader.load(text: """
        listeners: [{name: a, listen: 127.0.0.1:7000, pool: app}]
        pools:
          app:
            balance: \(name)
            backends: [{address: 127.0.0.1:9001, max_connections: 10}]
        """, file: "s.yaml")
        #expect(config.pools[0].balance.name == name)
    }

    @Test func optionsAStrategyDoesNotTakeAreRejected() {
        let found = diagnostics("""
        listeners: [{name: a, listen: 127.0.0.1:7000, pool: app}]
        pools:
          app:
            balance:
              strategy: round_robin
              decay: 10s
            backends: [127.0.0.1:9001]
        """)
        #expect(found.map(\.line) == [6])
        #expect(found.first?.keyPath == "pools.app.balance.decay")
        #expect(found.first?.message == "strategy 'round_robin' takes no option 'decay'")
        #expect(found.first?.hint == "round_robin has no options")
    }

    @Test func badStrategyOptionValues() {
        let found = diagnostics("""
        listeners: [{name: a, listen: 127.0.0.1:7000, pool: app}]
        pools:
          app:
            balance: {strategy: hash, key: mac, hash_balance_factor: 0.5}
            backends:
              - {address: 127.0.0.1:9001, backup: maybe}
        """)
        #expect(found.map(\.message) == ["'mac' is not a hash key", "'0.5' is not a valid balance factor",
                                          "'maybe' is not true or false"])
    }

    @Test func firstWithoutLimitsIsRejected() {
        let found = diagnostics("""
        listeners: [{name: a, listen: 127.0.0.1:7000, pool: app}]
        pools:
          app:
            balance: first
            backends: [127.0.0.1:9001]
        """)
        #expect(found.first?.message == "strategy 'first' needs max_connections on the backends")
        #expect(found.first?.line == 4)
    }
}

extension ConfigLoaderTests {
    @Test func anIPv4MappedListenAddressIsRejectedWithTheAddressToUseInstead() {
        let found = diagnostics("""
        listeners:
          - {name: a, listen: '[::ffff:127.0.0.1]:7000', pool: app}
        \(onePool)
        """)
        #expect(found.count == 1)
        #expect(found.first?.line == 2)
        #expect(found.first?.message.contains("IPv4-mapped") == true)
        #expect(found.first?.hint?.contains("127.0.0.1:7000") == true)
    }
}

extension ConfigLoaderTests {
    @Test func pidFileMustNameAFile() throws {
        let found = diagnostics("""
        pid_file: /run/
        listeners:
          - {name: a, listen: 127.0.0.1:7000, pool: app}
        \(onePool)
        """)
        #expect(found.count == 1 && found.first?.line == 1 && found.first?.keyPath == "pid_file")
        let config = try ConfigLoader.load(text: """
        pid_file: /run/fulcrum.pid
        listeners:
          - {name: a, listen: 127.0.0.1:7000, pool: app}
        \(onePool)
        """, file: "ok.yaml")
        #expect(config.pidFile == "/run/fulcrum.pid")
    }

    @Test func upgradeSocketMustNameAUsableSocketFile() throws {
        func problems(_ value: String) -> [ConfigDiagnostic] {
            diagnostics("""
            pid_file: /run/fulcrum/fulcrum.pid
            upgrade_socket: \(value)
            listeners:
              - {name: a, listen: 127.0.0.1:7000, pool: app}
            \(onePool)
            """)
        }
        for bad in ["/run/fulcrum/", "'@abstract'", "/run/fulcrum/fulcrum.pid", "/" + String(repeating: "x", count: 107)] {
            let found = problems(bad)
            #expect(found.count == 1 && found.first?.line == 2 && found.first?.keyPath == "upgrade_socket", "\(bad): \(found)")
            #expect(found.first?.hint?.contains("upgrade_socket: /run/fulcrum/upgrade.sock") == true)
        }
        #expect(problems("/" + String(repeating: "x", count: 107)).first?.message.contains("at most 107") == true)
        #expect(problems("/run/fulcrum/fulcrum.pid").first?.message.contains("also the pid_file") == true)
        let config = try ConfigLoader.load(text: """
        upgrade_socket: /run/fulcrum/upgrade.sock
        listeners:
          - {name: a, listen: 127.0.0.1:7000, pool: app}
        \(onePool)
        """, file: "ok.yaml")
        #expect(config.upgradeSocket == "/run/fulcrum/upgrade.sock")
        let off = try ConfigLoader.load(text: "listeners:\n  - {name: a, listen: 127.0.0.1:7000, pool: app}\n\(onePool)", file: "ok.yaml")
        #expect(off.upgradeSocket == nil)
    }

    @Test func adminSettings() throws {
        func load(_ admin: String) throws -> FulcrumConfig {
            try ConfigLoader.load(text: """
            admin: \(admin)
            listeners: [{name: a, listen: 127.0.0.1:7000, pool: p}]
            pools: {p: {backends: [127.0.0.1:9001]}}
            """, file: "admin.yaml")
        }
        #expect(try load("{listen: 127.0.0.1:9901}").admin == FulcrumConfig.Admin(address: .ipv4((127, 0, 0, 1), port: 9901)))
        #expect(try load("{listen: 0.0.0.0:9901, token_file: /etc/fulcrum/token}").admin?.token == .file("/etc/fulcrum/token"))
        #expect(try load("{listen: '[::1]:9901', token_env: FULCRUM_TOKEN}").admin?.token == .environment("FULCRUM_TOKEN"))
        func error(_ admin: String) -> String {
            do {
                _ = try load(admin)
                return "accepted"
            } catch {
                return "\(error)"
            }
        }
        #expect(error("{listen: 0.0.0.0:9901}").contains("admin.yaml:1: admin.listen: the admin API listens on 0.0.0.0:9901, which is not a loopback address, without a token"))
        #expect(error("{listen: 127.0.0.1:7000}").contains("also the address of listener 'a'"))
        #expect(error("{listen: 127.0.0.1:9901, token_file: /a, token_env: B}").contains("one token source"))
        #expect(error("{listen: 127.0.0.1:9901, token: short}").contains("at least 16"))
        #expect(error("{listen: 127.0.0.1:9901, token_env: 'A-B'}").contains("not an environment variable name"))
        #expect(error("{token_file: /a}").contains("missing required key 'listen'"))
        #expect(error("{listen: 127.0.0.1:9901, tokn: x}").contains("did you mean 'token'"))
    }
}
