import Foundation

/// A throwaway local account (needs root): made with `useradd`, optionally in one extra
/// supplementary group, and always removed with `userdel`/`groupdel`.
public struct TestUser: Sendable {
    public let name: String
    /// The supplementary group's name, when one was asked for.
    public let extraGroup: String?

    public static func create(extraGroup: Bool = false) throws -> TestUser {
        let name = "ferryt" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        let group = extraGroup ? name + "x" : nil
        let user = TestUser(name: name, extraGroup: group)
        do {
            try Shell.run(["useradd", "--no-create-home", "--user-group", "--shell", "/bin/sh", name])
            if let group {
                try Shell.run(["groupadd", group])
                try Shell.run(["usermod", "-aG", group, name])
            }
        } catch {
            user.remove()
            throw error
        }
        return user
    }

    /// Sets the password (`chpasswd`).
    public func setPassword(_ password: String) throws {
        try Shell.run(["chpasswd"], input: "\(name):\(password)\n")
    }

    public func remove() {
        _ = try? Shell.execute(["userdel", name])
        _ = try? Shell.execute(["groupdel", name])  // the user's own group, if userdel left it
        if let extraGroup { _ = try? Shell.execute(["groupdel", extraGroup]) }
    }
}

public func withTestUser<T>(extraGroup: Bool = false, _ body: (TestUser) throws -> T) throws -> T {
    let user = try TestUser.create(extraGroup: extraGroup)
    defer { user.remove() }
    return try body(user)
}

public func withTestUserAsync<T>(extraGroup: Bool = false, _ body: (TestUser) async throws -> T) async throws -> T {
    let user = try TestUser.create(extraGroup: extraGroup)
    defer { user.remove() }
    return try await body(user)
}
