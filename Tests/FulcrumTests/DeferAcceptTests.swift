import Foundation
import FulcrumTestSupport
import Glibc
import Testing

extension Integration {
    /// A listener's `defer_accept` (TCP_DEFER_ACCEPT), through real sockets: a backend that greets first
    /// (as MySQL or SMTP servers do) shows when Fulcrum accepted the client, since Fulcrum connects to the
    /// backend only then.
    @Suite(.serialized, .timeLimit(.minutes(1)))
    struct DeferAcceptTests {
        func config(backend: UInt16, listen: String = "127.0.0.1:0", deferAccept: String?) -> String {
            """
            workers: 1
            listeners:
              - name: front
                listen: \(listen)
                pool: app
            \(deferAccept.map { "    defer_accept: \($0)" } ?? "")
            pools:
              app:
                backends: [127.0.0.1:\(backend)]
            """
        }

        /// Reads `count` bytes from `socket` and returns them as text with the seconds they took since `start`.
        func read(_ socket: TestSocket, _ count: Int, since start: Date) throws -> (String, Double) {
            let bytes = try socket.receive(exactly: count)
            return (String(decoding: bytes, as: UTF8.self), Date().timeIntervalSince(start))
        }

        /// The kernel waits 3 s for a silent client (its SYN-ACK retransmissions at 1 s and 3 s); a client
        /// that speaks at once is served meanwhile.
        @Test func aSilentClientIsAcceptedOnlyWhenTheDeferralRunsOutWhileOneThatSpeaksIsServedAtOnce() throws {
            let backend = try TestBackend(.greet("hello"))
            let proxy = try FulcrumProcess(config: config(backend: backend.port, deferAccept: "3s"))
            let port = proxy.port("front")
            let silentSince = Date()
            let silent = try TestSocket.connect(port: port, timeout: 10)
            let speaking = try TestSocket.connect(port: port, timeout: 10)
            try speaking.send("ping")
            #expect(try read(speaking, 6 + 4, since: silentSince).0 == "hello\nping")
            // The client that spoke was accepted and connected; the silent one not yet.
            #expect(backend.accepted == 1)
            #expect(!silent.isReadable(within: 0))
            let (greeting, waited) = try read(silent, 6, since: silentSince)
            #expect(greeting == "hello\n")
            #expect(waited >= 2.5, "the silent client was greeted after \(waited) s")
            #expect(backend.accepted == 2)
        }

        @Test func aReloadTurnsItOnForTheListenersOpenSockets() throws {
            let backend = try TestBackend(.greet("hello"))
            let proxy = try FulcrumProcess(config: config(backend: backend.port, deferAccept: nil))
            let port = proxy.port("front")
            // Off: a silent client is accepted, and greeted, at once.
            let before = try TestSocket.connect(port: port, timeout: 10)
            #expect(try before.receive(exactly: 6) == Array("hello\n".utf8))
            // Writing out the port keeps the sockets; the workers set the option on them.
            try proxy.reload(config(backend: backend.port, listen: "127.0.0.1:\(port)", deferAccept: "1s"))
            #expect(proxy.logCount(containing: "defer_accept off -> 1s") == 1)
            let since = Date()
            let after = try TestSocket.connect(port: port, timeout: 10)
            let (greeting, waited) = try read(after, 6, since: since)
            #expect(greeting == "hello\n")
            #expect(waited >= 0.8, "the silent client was greeted after \(waited) s")
        }

        @Test func checkRejectsAPartOfASecondNamingTheKeyTheLineAndTheFix() throws {
            let dir = try TemporaryDirectory()
            let path = try dir.write("defer.yaml", config(backend: 9001, deferAccept: "1500ms"))
            let (status, output) = try runFulcrum(["check", "--config", path])
            #expect(status != 0)
            #expect(output.contains("defer.yaml:6: listeners[0].defer_accept: '1500ms' is not a whole number of seconds"), "\(output)")
            #expect(output.contains("the kernel counts TCP_DEFER_ACCEPT in seconds"), "\(output)")
        }
    }
}
