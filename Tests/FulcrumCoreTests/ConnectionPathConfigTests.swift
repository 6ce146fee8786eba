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

    @Test func deferAcceptIsOffUnlessAListenerSetsWholeSeconds() throws {
        #expect(try load(file()).listeners[0].deferAccept == nil)
        #expect(try load(file(listener: ", defer_accept: off")).listeners[0].deferAccept == nil)
        let on = try load(file(listener: ", defer_accept: 2s")).listeners[0]
        #expect(on.deferAccept == .seconds(2))
        #expect(on.deferAcceptSeconds == 2)
        #expect(try load(file(listener: ", defer_accept: 10m")).listeners[0].deferAcceptSeconds == 600)
    }

    @Test func deferAcceptOutsideWholeSecondsFromOneSecondToTenMinutesIsRejected() {
        let part = diagnostics(file(listener: ", defer_accept: 1500ms"))
        #expect(part.map(\.line) == [2])
        #expect(part.first?.keyPath == "listeners[0].defer_accept")
        #expect(part.first?.message == "'1500ms' is not a whole number of seconds")
        #expect(part.first?.hint?.contains("or off") == true)
        #expect(diagnostics(file(listener: ", defer_accept: 0s")).first?.message == "must be greater than zero")
        #expect(diagnostics(file(listener: ", defer_accept: 11m")).first?.message == "'11m' is too long")
        #expect(diagnostics(file(listener: ", defer_accept: soon")).first?.message == "'soon' is not a duration")
    }

    @Test func aReloadThatChangesDeferAcceptIsAListenerChange() throws {
        let running = try load(file())
        let loaded = try load(file(listener: ", defer_accept: 1s"))
        let changes = ConfigDiff(from: running, to: loaded).changes
        #expect(changes.map(\.description) == ["listener front: defer_accept off -> 1s"])
    }
}
