<?php
// Who am I: counts this visit in the session and shows the user, the counter and the server.
declare(strict_types=1);
require __DIR__ . '/app.inc.php';

session_start();
$_SESSION['visits'] = ($_SESSION['visits'] ?? 0) + 1;
status();
