import Foundation
import FerryJobs
import FerrySystem
import Testing

/// A worker without root's rights runs tasks with its own, so it takes only its own user's: free
/// ones, and ones whose lease expired. Both engines, one contract.
@Suite("Claims of one owner's tasks", .serialized)
struct OwnedClaimTests {
    @Test(arguments: storeEngines)
    func aClaimForOneOwnerTakesNoOtherOwnersTask(engine: StoreUnderTest) async throws {
        try await withStore(engine) { store in
            // The oldest task is another user's: an owner's claim must pass over it.
            let bobsFirst = try await store.create(newMove("bob", sources: ["/p/a/bob1"]))
            let alices = try await store.create(newMove("alice", sources: ["/p/a/alice1"]))
            let bobsSecond = try await store.create(newMove("bob", sources: ["/p/a/bob2"]))

            // Leases that must not run out while the test runs (a loaded machine takes minutes).
            let mine = try await store.claim(worker: "alice-worker", limit: 5, lease: .seconds(3600), ownedBy: "alice")
            #expect(mine.map(\.id) == [alices.id])
            #expect(mine.first?.leaseOwner == "alice-worker")
            #expect(try await store.claim(worker: "alice-worker", limit: 5, lease: .seconds(30), ownedBy: "alice").isEmpty)
            #expect(try await store.claim(worker: "x", limit: 1, lease: .seconds(30), ownedBy: "carol").isEmpty)
            // Bob's tasks are untouched: no lease, no attempt, no history of a claim.
            for task in [bobsFirst, bobsSecond] {
                let record = try #require(try await store.task(task.id))
                #expect(record.leaseOwner == nil)
                #expect(record.attempts == 0)
                #expect(try await store.events(task.id).allSatisfy { !$0.message.hasPrefix("claimed by") })
            }

            // Bob's worker takes his, oldest first, one at a time.
            let first = try await store.claim(worker: "bob-worker", limit: 1, lease: .seconds(5), ownedBy: "bob")
            #expect(first.map(\.id) == [bobsFirst.id])
            let second = try await store.claim(worker: "bob-worker", limit: 1, lease: .seconds(3600), ownedBy: "bob")
            #expect(second.map(\.id) == [bobsSecond.id])

            // An expired lease of Bob's: not for Alice's worker; Bob's next worker takes it over.
            try await Task.sleep(for: .milliseconds(5500))
            #expect(try await store.claim(worker: "alice-worker", limit: 5, lease: .seconds(30), ownedBy: "alice").isEmpty)
            let takenOver = try await store.claim(worker: "bob-again", limit: 5, lease: .seconds(30), ownedBy: "bob")
            #expect(takenOver.map(\.id) == [bobsFirst.id])
            #expect(takenOver.first?.takenOverFrom == "bob-worker")
            #expect(takenOver.first?.attempts == 2)
        }
    }

    /// A worker with root's rights (no owner) takes every owner's task, through the same call.
    @Test(arguments: storeEngines)
    func aClaimWithoutAnOwnerTakesAnyones(engine: StoreUnderTest) async throws {
        try await withStore(engine) { store in
            let bobs = try await store.create(newMove("bob", sources: ["/p/a/bob"]))
            let alices = try await store.create(newMove("alice", sources: ["/p/a/alice"]))
            let all = try await store.claim(worker: "root-worker", limit: 5, lease: .seconds(30), scope: nil)
            #expect(all.map(\.id) == [bobs.id, alices.id])
        }
    }
}
