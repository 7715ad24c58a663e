import CFerryPAM
import Foundation

public enum PAMResult: Sendable, Equatable {
    case success
    /// Wrong password, unknown user, expired or locked account: PAM's words for why.
    case denied(String)
    /// PAM itself could not answer (broken service file, missing module): not the user's fault.
    case unavailable(String)
}

/// Password logins (`[auth] mode = "pam"`).
public enum PAM {
    /// Checks `user`'s password with the PAM service `service`, then that the account may log in.
    /// Blocks: a failed attempt takes as long as the service's failure delay (pam_unix: about two
    /// seconds), so call it off Swift's cooperative pool.
    /// `remoteHost`: the client's address, for the modules (PAM_RHOST).
    public static func authenticate(service: String, user: String, password: String, remoteHost: String? = nil) -> PAMResult {
        guard ![service, user, password, remoteHost ?? ""].contains(where: { $0.utf8.contains(0) }) else {
            return .unavailable("the service, user name or password contains a NUL byte")
        }
        var message = [CChar](repeating: 0, count: 512)
        let status = ferry_pam_authenticate(service, user, password, remoteHost, &message, message.count)
        return result(status, message)
    }

    /// Whether `user`'s account may still be used, without a password: the service's account
    /// modules (an expiry date passed, access rules), and, when this process may read the shadow
    /// file, a password locked since (`passwd -l`, `usermod -L`), which account modules let pass.
    /// Blocks, as `authenticate` does.
    public static func accountUsable(service: String, user: String, remoteHost: String? = nil) -> PAMResult {
        guard ![service, user, remoteHost ?? ""].contains(where: { $0.utf8.contains(0) }) else {
            return .unavailable("the service or user name contains a NUL byte")
        }
        var message = [CChar](repeating: 0, count: 512)
        let answer = result(ferry_pam_account(service, user, remoteHost, &message, message.count), message)
        guard answer == .success else { return answer }
        if ferry_password_locked(user) == 1 { return .denied("the account's password is locked") }
        return .success
    }

    private static func result(_ status: Int32, _ message: [CChar]) -> PAMResult {
        let text = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        switch status {
        case FERRY_PAM_SUCCESS:
            return .success
        case FERRY_PAM_SERVICE_ERR, FERRY_PAM_SYSTEM_ERR, FERRY_PAM_BUF_ERR, FERRY_PAM_ABORT:
            return .unavailable(text)
        default:
            return .denied(text)
        }
    }
}
