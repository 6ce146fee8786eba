import FulcrumCore
import Testing

/// The settings of the connection path: a pool's `splice`, a listener's `defer_accept`.
@Suite struct ConnectionPathConfigTests {
    private func load(_ yaml: String) throws -> FulcrumConfig {
        try ConfigLoader.load(text: yaml, file: "test.yaml")
    }

    private func diagnostics(_ yaml: String) -> [ConfigDiagnostic] {
        do {
            _ = try ConfigLoader.load(text: yaml, file: "test.yaml")
            Issue.record("expected the configuration to be rejected")
            return []
        } catch {
            return error.diagnostics
        }
    }

    private func file(pool extra: String = "", listener: String = "") -> String {
        """
        listeners:
          - {name: front, listen: 127.0.0.1:7000, pool: app\(listener)}
        pools:
          app:
            backends: [127.0.0.1:9001]
        \(extra.isEmpty ? "" : "    " + extra)
        """
    }

    @Test func spliceIsAutoUnlessAPoolTurnsItOff() throws {
        #expect(try load(file()).pools[0].splice)
        #expect(try load(file(pool: "splice: auto")).pools[0].splice)
        #expect(try !load(file(pool: "splice: off")).pools[0].splice)
    }

    @Test func anUnknownSpliceSettingNamesTheKeyTheLineAndTheChoices() {
        let found = diagnostics(file(pool: "splice: always"))
        #expect(found.map(\.line) == [6])
        #expect(found.first?.keyPath == "pools.app.splice")
        #expect(found.first?.message == "'always' is not a splice setting")
        #expect(found.first?.hint?.contains("auto") == true)
        #expect(found.first?.hint?.contains("off") == true)
    }

    @Test func aReloadThatTurnsSpliceOffIsAPoolSettingChange() throws {
        let running = try load(file())
        let loaded = try load(file(pool: "splice: off"))
        let changes = ConfigDiff(from: running, to: loaded).changes
        #expect(changes.map(\.description) == ["pool app: settings replaced (splice)"])
    }
}
