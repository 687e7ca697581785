// orchestra dashboard: the only script. Pages work without it; it only keeps a
// confirmation button disabled until its checkbox is ticked (the server checks too).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("input[type=checkbox][data-enables]").forEach(function (box) {
    var button = document.getElementById(box.getAttribute("data-enables"));
    if (!button) { return; }
    var sync = function () { button.disabled = !box.checked; };
    box.addEventListener("change", sync);
    sync();
  });
});
