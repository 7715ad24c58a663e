#ifndef FERRY_PAM_H
#define FERRY_PAM_H

#include <stddef.h>

// Checks a user's password with the PAM service `service` (/etc/pam.d/<service>, else
// /etc/pam.d/other): pam_authenticate then pam_acct_mgmt. Every prompt is answered with
// `password`. Returns the PAM status; on failure `message` holds pam_strerror's text, followed by
// the last error a module reported, if one did.
int ferry_pam_authenticate(const char *service, const char *user, const char *password,
                           char *message, size_t message_len);

// PAM's status numbers, so Swift never hardcodes one.
extern const int FERRY_PAM_SUCCESS;
extern const int FERRY_PAM_SERVICE_ERR;
extern const int FERRY_PAM_SYSTEM_ERR;
extern const int FERRY_PAM_BUF_ERR;
extern const int FERRY_PAM_ABORT;

#endif
