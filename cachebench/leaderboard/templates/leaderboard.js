// Sorting (click or Enter on a header; again to reverse) and the model and task filters. Plain DOM, no library.
(function () {
  "use strict";

  function sortKey(cell, numeric) {
    var raw = cell ? cell.getAttribute("data-v") : null;
    if (raw === null || raw === "") {
      return null;
    }
    if (numeric) {
      var value = parseFloat(raw);
      return isNaN(value) ? null : value;
    }
    return raw.toLowerCase();
  }

  function sortBy(table, header, index) {
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    var numeric = header.getAttribute("data-type") === "num";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) {
      other.removeAttribute("aria-sort");
    });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var items = Array.prototype.map.call(body.rows, function (row, position) {
      return {row: row, key: sortKey(row.cells[index], numeric), position: position};
    });
    items.sort(function (a, b) {
      if (a.key === null || b.key === null) {  // missing values last, whichever the direction
        return a.key === b.key ? a.position - b.position : (a.key === null ? 1 : -1);
      }
      if (a.key !== b.key) {
        return (a.key < b.key ? -1 : 1) * (ascending ? 1 : -1);
      }
      return a.position - b.position;
    });
    var fragment = document.createDocumentFragment();
    items.forEach(function (item) {
      fragment.appendChild(item.row);
    });
    body.appendChild(fragment);
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, index) {
      if (header.classList.contains("nosort")) {
        return;
      }
      header.addEventListener("click", function () {
        sortBy(table, header, index);
      });
      header.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          sortBy(table, header, index);
        }
      });
    });
  });

  var modelFilter = document.getElementById("filter-model");
  var taskFilter = document.getElementById("filter-task");
  var counter = document.getElementById("filter-count");

  function mismatched(element, attribute, wanted) {
    return wanted !== "" && element.hasAttribute(attribute) && element.getAttribute(attribute) !== wanted;
  }

  function applyFilters() {
    var model = modelFilter.value;
    var task = taskFilter.value;
    document.querySelectorAll("[data-task], [data-model]").forEach(function (element) {
      element.hidden = mismatched(element, "data-task", task) || mismatched(element, "data-model", model);
    });
    document.querySelectorAll("section.task").forEach(function (section) {
      if (!section.hidden) {  // a task none of whose cells is left goes too
        section.hidden = section.querySelectorAll("table.cells tbody tr:not([hidden])").length === 0;
      }
    });
    document.querySelectorAll("section.family").forEach(function (family) {
      family.hidden = Array.prototype.every.call(family.querySelectorAll("section.task"), function (section) {
        return section.hidden;
      });
    });
    var rows = document.querySelectorAll("section.task table.cells tbody tr");
    var shown = Array.prototype.filter.call(rows, function (row) {
      return !row.hidden && !row.closest("[hidden]");
    }).length;
    counter.textContent = shown + " of " + rows.length + " cells shown";
  }

  modelFilter.addEventListener("change", applyFilters);
  taskFilter.addEventListener("change", applyFilters);
  applyFilters();
})();
