// The dashboard's one script: say so when the live connection drops.
// htmx's ws extension reconnects by itself; the server's first push after
// that replaces #live-status (and every other part) with the current state.
document.addEventListener("htmx:wsClose", function () {
  var status = document.getElementById("live-status");
  if (status) {
    status.classList.remove("live");
    status.classList.add("offline");
    status.textContent = "Connection lost: reconnecting…";
  }
});
