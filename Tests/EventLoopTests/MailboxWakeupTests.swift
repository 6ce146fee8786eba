import EventLoop
import FulcrumCore
import Synchronization
import Testing

/// A mailbox woken through a loop's wakeup pipe, sharing it with plain command bytes, as a worker's does.
@Suite(.timeLimit(.minutes(1)))
struct MailboxWakeupTests {
    static let mailboxByte: UInt8 = 0x6D
    static let otherByte: UInt8 = 0x07

    @Test func messagesFromOtherThreadsArriveInOrderBetweenTheLoopsEvents() throws {
        let producers = 2
        let perProducer = 5_000
        let otherCommands = 100
        let total = producers * perProducer
        let base = EventBase()
        let pipe = try WakeupPipe()
        let sender = pipe.sender
        let wakes = Atomic<Int>(0)
        let mailbox = Mailbox<UInt64> {
            wakes.wrappingAdd(1, ordering: .relaxed)
            return sender.send(Self.mailboxByte)
        }
        var received: [UInt64] = []
        var drains = 0
        var others = 0
        var timedOut = false
        let receiver = WakeupReceiver(base: base, pipe: pipe) { byte in
            switch byte {
            case Self.mailboxByte:
                drains += 1
                mailbox.drain { received.append($0) }
            case Self.otherByte: others += 1
            default: Issue.record("unexpected command \(byte)")
            }
            if received.count == total && others == otherCommands { base.exit() }
        }
        // A lost wake leaves messages behind: end the loop after 10 s rather than hang.
        let watchdog = Timer(base: base) {
            timedOut = true
            base.exit()
        }
        watchdog.schedule(after: 10_000_000)

        var threads = (0..<producers).map { producer in
            LoopThread.spawn(name: "test-post-\(producer)") {
                for sequence in 0..<perProducer { mailbox.post(UInt64(producer) << 32 | UInt64(sequence)) }
            }
        }
        threads.append(LoopThread.spawn(name: "test-commands") {
            for _ in 0..<otherCommands { sender.send(Self.otherByte) }
        })
        base.run()
        for thread in threads { thread.join() }
        withExtendedLifetime(receiver) {}
        watchdog.cancel()

        #expect(!timedOut, "received \(received.count) of \(total) messages, \(others) of \(otherCommands) commands")
        #expect(received.count == total)
        #expect(others == otherCommands)
        var next = [Int](repeating: 0, count: producers)
        for message in received {
            let producer = Int(message >> 32)
            guard producer < producers, Int(message & 0xFFFF_FFFF) == next[producer] else {
                Issue.record("message \(message & 0xFFFF_FFFF) of producer \(producer) out of order")
                return
            }
            next[producer] += 1
        }
        let wakeCount = wakes.load(ordering: .relaxed)
        print("mailbox on a loop: \(total) messages, \(wakeCount) wakes, \(drains) drains")
        #expect(wakeCount <= drains + 1)
        #expect(wakeCount < total / 2)
    }
}
