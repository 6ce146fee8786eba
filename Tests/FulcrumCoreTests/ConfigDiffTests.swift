import FulcrumCore
import Testing

/// Loads a configuration the way a reload does: real YAML through `ConfigLoader`.
private func load(_ yaml: String) throws -> FulcrumConfig {
    try ConfigLoader.load(text: yaml, file: "reload.yaml")
}

private func ipv4(_ port: UInt16) -> SocketAddress { .ipv4((127, 0, 0, 1), port: port) }

private func id(_ pool: String, _ port: UInt16) -> BackendID { BackendID(pool: pool, address: ipv4(port)) }

/// A file with one listener on pool `app`; `backends` and `extra` (more pool keys) are spliced in.
private func appFile(backends: String, extra: String = "", top: String = "", listeners: String? = nil) -> String {
    """
    \(top)
    listeners:
    \(listeners ?? """
      - name: front
        listen: 127.0.0.1:7000
        pool: app
    """)
    pools:
      app:
    \(extra)
        backends:
    \(backends)
      other:
        backends:
          - 127.0.0.1:9100
    """
}

private let threeBackends = """
      - address: 127.0.0.1:9001
      - address: 127.0.0.1:9002
        weight: 2
      - address: 127.0.0.1:9003
"""

@Suite struct ConfigDiffTests {
    // MARK: - No change

    @Test func identicalFilesGiveNoChange() throws {
        let config = try load(appFile(backends: threeBackends))
        let again = try load(appFile(backends: threeBackends))
        let diff = ConfigDiff(from: config, to: again)
        #expect(diff.isEmpty)
        #expect(diff.restartKeys.isEmpty)
    }

    @Test func reorderedBackendsGiveNoChange() throws {
        let running = try load(appFile(backends: threeBackends))
        let loaded = try load(appFile(backends: """
              - address: 127.0.0.1:9003
              - address: 127.0.0.1:9001
              - address: 127.0.0.1:9002
                weight: 2
        """))
        #expect(loaded.pools[0].backends.map(\.address) != running.pools[0].backends.map(\.address))
        #expect(ConfigDiff(from: running, to: loaded).changes == [])
    }

    @Test func reorderedBackendsUnderFirstReportTheNewFillOrder() throws {
        let limited = { (ports: [Int]) in
            ports.map { "      - address: 127.0.0.1:\($0)\n        max_connections: 10" }.joined(separator: "\n")
        }
        let running = try load(appFile(backends: limited([9001, 9002]), extra: "    balance: first"))
        let loaded = try load(appFile(backends: limited([9002, 9001]), extra: "    balance: first"))
        #expect(ConfigDiff(from: running, to: loaded).changes
                == [.backendOrderChanged(pool: "app", order: [id("app", 9002), id("app", 9001)])])
        // Adding one at the end keeps the relative order of the others: only the addition.
        let grown = try load(appFile(backends: limited([9001, 9002, 9003]), extra: "    balance: first"))
        let changes = ConfigDiff(from: running, to: grown).changes
        #expect(changes.count == 1)
        #expect(changes.first.map { if case .backendAdded(id("app", 9003), _) = $0 { true } else { false } } == true)
    }

    // MARK: - Backends

    @Test func addedRemovedReweightedAndDrainedBackendsAreKeyedByAddress() throws {
        let running = try load(appFile(backends: threeBackends))
        // 9001 removed, 9002 reweighted and moved to the end, 9003 drained, 9004 added at the front.
        let loaded = try load(appFile(backends: """
              - address: 127.0.0.1:9004
                weight: 5
              - address: 127.0.0.1:9003
                state: drain
              - address: 127.0.0.1:9002
                weight: 3
        """))
        let old = running.pools[0].backends, new = loaded.pools[0].backends
        #expect(ConfigDiff(from: running, to: loaded).changes == [
            .backendRemoved(id("app", 9001)),
            .backendChanged(id("app", 9003), keys: ["state"], from: old[2], to: new[1]),
            .backendChanged(id("app", 9002), keys: ["weight"], from: old[1], to: new[2]),
            .backendAdded(id("app", 9004), new[0]),
        ])
    }

    @Test func backupMaxConnectionsAndSeveralKeysAtOnce() throws {
        let running = try load(appFile(backends: threeBackends))
        let loaded = try load(appFile(backends: """
              - address: 127.0.0.1:9001
                backup: true
                max_connections: 50
                weight: 4
                state: disabled
              - address: 127.0.0.1:9002
                weight: 2
              - address: 127.0.0.1:9003
        """))
        let changes = ConfigDiff(from: running, to: loaded).changes
        #expect(changes.count == 1)
        guard case let .backendChanged(backend, keys, from, to)? = changes.first else {
            Issue.record("expected one backend change, got \(changes)")
            return
        }
        #expect(backend == id("app", 9001))
        #expect(keys == ["weight", "priority", "max_connections", "state"])
        #expect(from.weight == 1 && to.weight == 4 && to.priority == 1 && to.maxConnections == 50)
        #expect(changes[0].description
                == "backend app/127.0.0.1:9001: weight 1 -> 4, priority 0 -> 1, max_connections none -> 50, state enabled -> disabled")
    }

    @Test func aBackendRemovedAndAddedAgainKeepsItsIdentity() throws {
        let with = try load(appFile(backends: threeBackends))
        let without = try load(appFile(backends: """
              - address: 127.0.0.1:9001
              - address: 127.0.0.1:9003
        """))
        let removed = ConfigDiff(from: with, to: without).changes
        let readded = ConfigDiff(from: without, to: with).changes
        #expect(removed == [.backendRemoved(id("app", 9002))])
        guard case let .backendAdded(again, backend)? = readded.first, readded.count == 1 else {
            Issue.record("expected one addition, got \(readded)")
            return
        }
        #expect(again == id("app", 9002))
        #expect(backend.weight == 2)
        // The identity is the same value, so state kept under it (counters, health) is found again.
        var live: [BackendID: Int] = [id("app", 9002): 7]
        live[again, default: 0] += 1
        #expect(live.count == 1 && live[id("app", 9002)] == 8)
        #expect(again.description == "app/127.0.0.1:9002")
        #expect(BackendID(pool: "app", address: .ipv6([UInt8](repeating: 0, count: 15) + [1], port: 9))
                .description == "app/[::1]:9")
        // The same address in another pool is another backend.
        #expect(id("other", 9002) != again)
        #expect(with.pools[0].backendIDs == [id("app", 9001), id("app", 9002), id("app", 9003)])
    }

    // MARK: - Pool settings

    @Test func strategyAndOtherPoolKeysAreReportedByName() throws {
        let running = try load(appFile(backends: threeBackends))
        let loaded = try load(appFile(backends: threeBackends, extra: """
            balance: least_connections
            connect_timeout: 250ms
            breaker:
              consecutive_failures: 3
            queue:
              size: 10
        """))
        let changes = ConfigDiff(from: running, to: loaded).changes
        #expect(changes == [.poolSettingsChanged(pool: "app", keys: ["balance", "connect_timeout", "queue", "breaker"],
                                                 settings: loaded.pools[0])])
        #expect(changes[0].description == "pool app: settings replaced (balance, connect_timeout, queue, breaker)")
    }

    @Test func poolsAddedAndRemoved() throws {
        let running = try load(appFile(backends: threeBackends))
        let loaded = try load("""
        listeners:
          - name: front
            listen: 127.0.0.1:7000
            pool: app
        pools:
          fresh:
            backends:
              - 127.0.0.1:9200
          app:
            backends:
        \(threeBackends)
        """)
        #expect(ConfigDiff(from: running, to: loaded).changes == [.poolAdded(loaded.pools[0]), .poolRemoved(name: "other")])
    }

    // MARK: - Listeners

    @Test func listenersAddedRemovedMovedAndReaddressed() throws {
        let running = try load(appFile(backends: threeBackends, listeners: """
          - name: front
            listen: 127.0.0.1:7000
            pool: app
          - name: old
            listen: 127.0.0.1:7001
            pool: app
          - name: side
            listen: 127.0.0.1:7002
            pool: app
        """))
        let loaded = try load(appFile(backends: threeBackends, listeners: """
          - name: new
            listen: 127.0.0.1:7001
            pool: other
          - name: side
            listen: 127.0.0.1:7003
            pool: other
            backlog: 64
          - name: front
            listen: 127.0.0.1:7000
            pool: app
        """))
        let (old, new) = (running.listeners, loaded.listeners)
        let changes = ConfigDiff(from: running, to: loaded).changes
        #expect(changes == [
            .listenerRemoved(old[1]),
            .listenerMoved(name: "side", from: "app", to: "other"),
            .listenerChanged(name: "side", keys: ["listen", "backlog"], from: old[2], to: new[1]),
            .listenerAdded(new[0]),
        ])
        #expect(changes.map(\.description) == [
            "listener old: removed, draining",
            "listener side: pool app -> other for new connections",
            "listener side: listen 127.0.0.1:7002 -> 127.0.0.1:7003, backlog 4096 -> 64",
            "listener new: added on 127.0.0.1:7001 for pool other",
        ])
    }

    // MARK: - Top level

    @Test func workersAndBufferSizeNeedARestartAndKeepTheRunningValue() throws {
        let running = try load(appFile(backends: threeBackends, top: "workers: 2\nbuffer_size: 64KiB"))
        let loaded = try load(appFile(backends: threeBackends, top: "workers: 4\nbuffer_size: 1MiB\ndrain_timeout: 5s"))
        let diff = ConfigDiff(from: running, to: loaded)
        #expect(diff.changes == [
            .needsRestart(key: "workers", running: "2", loaded: "4"),
            .needsRestart(key: "buffer_size", running: "64KiB", loaded: "1MiB"),
            .drainTimeoutChanged(from: .seconds(30), to: .seconds(5)),
        ])
        #expect(diff.restartKeys == ["workers", "buffer_size"])
        #expect(diff.changes[0].description == "workers: needs restart: kept running value 2 (file has 4)")
        let applied = running.reloaded(to: loaded)
        #expect(applied.workers == .count(2) && applied.bufferSize == 64 << 10 && applied.drainTimeout == .seconds(5))
        #expect(ConfigDiff(from: running, to: applied).restartKeys.isEmpty)
    }

    /// `upgrade_socket` is where the running process serves its listening sockets to the next one: a
    /// reload cannot move it (a takeover in progress would lose its peer), so it needs a restart.
    @Test func upgradeSocketNeedsARestartAndKeepsTheRunningValue() throws {
        let running = try load(appFile(backends: threeBackends, top: "upgrade_socket: /run/fulcrum/a.sock"))
        let loaded = try load(appFile(backends: threeBackends, top: "upgrade_socket: /run/fulcrum/b.sock"))
        let diff = ConfigDiff(from: running, to: loaded)
        #expect(diff.changes == [.needsRestart(key: "upgrade_socket", running: "/run/fulcrum/a.sock", loaded: "/run/fulcrum/b.sock")])
        #expect(diff.restartKeys == ["upgrade_socket"])
        #expect(running.reloaded(to: loaded).upgradeSocket == "/run/fulcrum/a.sock")
        let off = try load(appFile(backends: threeBackends))
        #expect(ConfigDiff(from: off, to: running).changes == [
            .needsRestart(key: "upgrade_socket", running: "off", loaded: "/run/fulcrum/a.sock"),
        ])
        #expect(ConfigDiff(from: running, to: running).changes.isEmpty)
    }

    // MARK: - Order

    @Test func everythingAtOnceComesInApplyOrderEveryTime() throws {
        let runningText = appFile(backends: threeBackends, top: "workers: 2")
        let loadedText = """
        workers: 3
        listeners:
          - name: front
            listen: 127.0.0.1:7000
            pool: fresh
        pools:
          fresh:
            backends:
              - 127.0.0.1:9200
          app:
            balance: random
            backends:
              - 127.0.0.1:9004
              - address: 127.0.0.1:9001
                weight: 9
        """
        let first = ConfigDiff(from: try load(runningText), to: try load(loadedText)).changes
        for _ in 0..<5 {
            #expect(ConfigDiff(from: try load(runningText), to: try load(loadedText)).changes == first)
        }
        #expect(first.map(\.description) == [
            "workers: needs restart: kept running value 2 (file has 3)",
            "pool fresh: added with 1 backend(s)",
            "pool app: settings replaced (balance)",
            "backend app/127.0.0.1:9002: removed, draining",
            "backend app/127.0.0.1:9003: removed, draining",
            "backend app/127.0.0.1:9001: weight 1 -> 9",
            "backend app/127.0.0.1:9004: added",
            "listener front: pool app -> fresh for new connections",
            "pool other: removed",
        ])
    }
}
