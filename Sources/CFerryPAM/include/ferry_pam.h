#ifndef FERRY_PAM_H
#define FERRY_PAM_H

#include <stddef.h>

// Checks a user's password with the PAM service `service` (/etc/pam.d/<service>, else
// /etc/pam.d/other): pam_authenticate then pam_acct_mgmt. Every prompt is answered with
// `password`. Returns the PAM status; on failure `message` holds pam_strerror's text, followed by
// the last error a module reported, if one did. `remote_host` (may be NULL) is the client's
// address, given to the modules as PAM_RHOST (pam_access, pam_faillock and the audit log use it).
int ferry_pam_authenticate(const char *service, const char *user, const char *password, const char *remote_host,
                           char *message, size_t message_len);

// Whether the account may still be used (pam_acct_mgmt alone: expired accounts, access rules),
// asked again while a session lasts. Same status and message as above.
int ferry_pam_account(const char *service, const char *user, const char *remote_host,
                      char *message, size_t message_len);

// 1 if the shadow file says `user`'s password is locked (`passwd -l`: a hash starting with "!"),
// 0 if not or if it cannot be read (not root, no such entry).
int ferry_password_locked(const char *user);

// PAM's status numbers, so Swift never hardcodes one.
extern const int FERRY_PAM_SUCCESS;
extern const int FERRY_PAM_SERVICE_ERR;
extern const int FERRY_PAM_SYSTEM_ERR;
extern const int FERRY_PAM_BUF_ERR;
extern const int FERRY_PAM_ABORT;

#endif
