import EventLoop
import FulcrumTestSupport
import Glibc
import Testing

@Suite(.timeLimit(.minutes(1)))
struct ListenerTests {
    /// A listening socket on 127.0.0.1 with a kernel-chosen port.
    private func listeningSocket() throws -> (fd: Int32, port: UInt16) {
        let fd = try Socket.listen(Endpoint(ipv4: (127, 0, 0, 1), port: 0), reusePort: false, backlog: 512)
        return (fd, try Socket.localEndpoint(fd).port)
    }

    private func noDelay(_ fd: Int32) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &value, &length)
        return value
    }

    @Test func acceptedSocketsCarryNoDelayFromTheListeningSocket() throws {
        let (fd, port) = try listeningSocket()
        let base = EventBase()
        var accepted: [Int32] = []
        let listener = Listener(base: base, fd: fd, onAccept: { client, _ in
            accepted.append(client)
            base.exit()
        }, onError: { _ in })
        let client = try TestSocket.connect(port: port)
        base.run()
        #expect(accepted.count == 1)
        // Set once on the listening socket, copied by the kernel to the accepted one: no setsockopt per client.
        #expect(noDelay(fd) != 0)
        #expect(accepted.first.map(noDelay) != 0)
        accepted.forEach { Glibc.close($0) }
        listener.close()
        withExtendedLifetime(client) {}
    }

    /// A connection that arrives before any listener runs (at start-up, or on a listener a reload adds)
    /// still comes with TCP_NODELAY: the socket has it from before `listen`.
    @Test func aConnectionQueuedBeforeTheListenerRunsCarriesNoDelay() throws {
        let (fd, port) = try listeningSocket()
        defer { Glibc.close(fd) }
        let client = try TestSocket.connect(port: port)
        var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        #expect(poll(&ready, 1, 5000) == 1)
        let accepted = accept(fd, nil, nil)
        #expect(accepted >= 0)
        #expect(noDelay(accepted) != 0)
        Glibc.close(accepted)
        withExtendedLifetime(client) {}
    }

    @Test func aQueueLongerThanOneBatchIsAcceptedToTheLastConnection() throws {
        let (fd, port) = try listeningSocket()
        let base = EventBase()
        let count = 300
        // Every connection is queued before the loop runs, so the listener's first wakeup finds them all.
        let clients = try (0..<count).map { _ in try TestSocket.connect(port: port) }
        var accepted: [Int32] = []
        var peersSeen = Set<UInt16>()
        let listener = Listener(base: base, fd: fd, onAccept: { client, peer in
            accepted.append(client)
            peersSeen.insert(peer.port)
            if accepted.count == count { base.exit() }
        }, onError: { _ in })
        base.run()
        #expect(accepted.count == count)
        #expect(peersSeen.count == count)
        accepted.forEach { Glibc.close($0) }
        listener.close()
        withExtendedLifetime(clients) {}
    }

    @Test func theBatchFollowsWhatTheLastWakeupFound() {
        var budget = AcceptBudget()
        #expect(budget.limit == 1)
        // One connection per wakeup: the limit stays at one, and only one wakeup in three tries a second accept.
        budget.record(accepted: 1, emptied: false)
        #expect(budget.limit == 1)
        budget.record(accepted: 1, emptied: false)
        #expect(budget.limit == 2)
        budget.record(accepted: 1, emptied: true)
        #expect(budget.limit == 1)
        // A queue that keeps the whole limit busy doubles it every second wakeup, up to the maximum.
        var limits: [Int] = []
        for _ in 0..<16 {
            budget.record(accepted: budget.limit, emptied: false)
            limits.append(budget.limit)
        }
        #expect(limits == [1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 64, 64, 64, 64])
        // Emptying the queue after 5 sets the limit to 5; a wakeup that ends early (a pause) changes nothing.
        budget.record(accepted: 5, emptied: true)
        #expect(budget.limit == 5)
        budget.record(accepted: 2, emptied: false)
        #expect(budget.limit == 5)
        budget.record(accepted: 0, emptied: true)
        #expect(budget.limit == 1)
    }
}
