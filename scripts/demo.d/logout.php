<?php
// Logs out: the session is destroyed (its file unlinked) and the cookie expired.
declare(strict_types=1);
require __DIR__ . '/app.inc.php';

session_start();
$_SESSION = [];
$p = session_get_cookie_params();
setcookie(session_name(), '', [
    'expires' => time() - 3600,
    'path' => $p['path'],
    'domain' => $p['domain'],
    'secure' => $p['secure'],
    'httponly' => $p['httponly'],
    'samesite' => $p['samesite'],
]);
session_destroy();
status('logout');
