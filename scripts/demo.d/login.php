<?php
// POST user=NAME logs in: the name goes into the session, under a new session id.
declare(strict_types=1);
require __DIR__ . '/app.inc.php';

if ($_SERVER['REQUEST_METHOD'] !== 'POST') {
    header('Content-Type: text/html; charset=utf-8');
    echo '<form method="post"><input name="user" placeholder="user">',
         ' <button>log in</button></form>', "\n";
    exit;
}
$user = (string)($_POST['user'] ?? '');
if (!preg_match('/^[A-Za-z0-9_.-]{1,32}$/', $user)) {
    http_response_code(400);
    header('Content-Type: text/plain; charset=utf-8');
    echo "error=bad-user-name\n";
    exit;
}
session_start();
// A new id at every login (session fixation); true deletes the old session file.
session_regenerate_id(true);
$_SESSION['user'] = $user;
$_SESSION['visits'] = ($_SESSION['visits'] ?? 0) + 1;
status('login');
