// The console's one script: it only improves pages that work without it (every action is a plain form).
(function () {
  'use strict';

  document.querySelectorAll('form[data-confirm]').forEach(function (form) {
    form.addEventListener('submit', function (e) {
      if (!window.confirm(form.dataset.confirm)) e.preventDefault();
    });
  });

  var AP = window.AsciinemaPlayer;
  var player = document.getElementById('player');
  if (player && AP) {
    window.gwPlayer = AP.create(player.dataset.src, player, { fit: 'width', idleTimeLimit: 2, controls: true });
  }
  var live = document.getElementById('live-player');
  if (live && AP) {
    window.gwPlayer = AP.create({ driver: 'eventsource', url: live.dataset.src }, live, { autoPlay: true, fit: 'width' });
  }

  // A running Postgres session: statements appended as they happen (text only, never markup).
  var table = document.querySelector('#transcript[data-live]');
  if (table) {
    var body = table.tBodies[0];
    while (body.rows.length) body.deleteRow(0); // the stream starts from the first statement
    var es = new EventSource(table.dataset.live);
    es.onmessage = function (ev) {
      var st = JSON.parse(ev.data);
      var row = body.insertRow(-1);
      row.className = 'statement';
      [st.t.toFixed(3), st.verdict, st.sql, st.rows === null ? '' : String(st.rows),
        st.ms === null ? '' : st.ms.toFixed(1), st.reason].forEach(function (v) {
        row.insertCell(-1).textContent = v;
      });
    };
    es.addEventListener('done', function () { es.close(); });
  }
})();
