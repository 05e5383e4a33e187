// Pieskieo through pgjdbc: server-side prepare after prepareThreshold, BEGIN
// via the extended protocol, executeBatch, arrays, jsonb, transfers.
// Usage: java JdbcCheck JDBC_URL USER PASSWORD KEY_A KEY_B
import java.math.BigDecimal;
import java.sql.*;

public class JdbcCheck {
    static final String LABEL = "it's a \\ \"quote\" — zażółć 漢字";

    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    static void expectState(Connection c, String sql, String state) {
        try (Statement st = c.createStatement()) {
            st.execute(sql);
            check(false, "expected " + state + " from " + sql);
        } catch (SQLException e) {
            check(state.equals(e.getSQLState()), "sqlstate " + e.getSQLState() + " for " + sql);
        }
    }

    static long balance(Connection c, long id) throws SQLException {
        try (PreparedStatement p = c.prepareStatement("SELECT balance FROM accounts WHERE id = ?")) {
            p.setLong(1, id);
            try (ResultSet rs = p.executeQuery()) {
                rs.next();
                return rs.getLong(1);
            }
        }
    }

    public static void main(String[] args) throws Exception {
        long a = Long.parseLong(args[3]), b = Long.parseLong(args[4]);
        long[] ids = new long[20];
        for (int i = 0; i < 10; i++) {
            ids[i] = -6_000_000_000L - i;
            ids[10 + i] = 6_000_000_000L + i;
        }
        try (Connection c = DriverManager.getConnection(args[0], args[1], args[2])) {
            try (PreparedStatement ins = c.prepareStatement(
                    "INSERT INTO items (id, label, amount, tags, doc) VALUES (?, ?, ?, ?, ?::jsonb)")) {
                for (long id : ids) {
                    ins.setLong(1, id);
                    ins.setString(2, LABEL + id);
                    ins.setBigDecimal(3, new BigDecimal("9.870"));
                    ins.setArray(4, c.createArrayOf("text", new String[] {"x", null, "z"}));
                    ins.setString(5, "{\"k\": " + id + ", \"n\": null}");
                    check(ins.executeUpdate() == 1, "insert count");
                }
            }
            // Past prepareThreshold (5) the driver switches to a named server-side statement.
            try (PreparedStatement sel = c.prepareStatement(
                    "SELECT label, amount, tags, doc::text FROM items WHERE id = ?")) {
                for (long id : ids) {
                    sel.setLong(1, id);
                    try (ResultSet rs = sel.executeQuery()) {
                        check(rs.next(), "row " + id);
                        check(rs.getString(1).equals(LABEL + id), "label " + rs.getString(1));
                        check(rs.getBigDecimal(2).toPlainString().equals("9.870"), "amount " + rs.getBigDecimal(2));
                        Object[] tags = (Object[]) rs.getArray(3).getArray();
                        check(tags.length == 3 && "x".equals(tags[0]) && tags[1] == null && "z".equals(tags[2]), "tags");
                        check(rs.getString(4).equals("{\"k\": " + id + ", \"n\": null}"), "doc " + rs.getString(4));
                    }
                }
            }
            // A batch of single-row inserts over every shard.
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO items (id, label) VALUES (?, ?)")) {
                for (long id = 1; id <= 30; id++) {
                    ins.setLong(1, id);
                    ins.setString(2, "batch" + id);
                    ins.addBatch();
                }
                int[] counts = ins.executeBatch();
                check(counts.length == 30, "batch size");
            }
            // A batch over every shard outside a transaction is one implicit
            // transaction, as in PostgreSQL: one bad row (a duplicate key at
            // the end) and no row of it is anywhere.
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO items (id, label) VALUES (?, ?)")) {
                for (long id = 201; id <= 231; id++) {
                    ins.setLong(1, id == 231 ? 201 : id);
                    ins.setString(2, "atomic" + id);
                    ins.addBatch();
                }
                try {
                    ins.executeBatch();
                    check(false, "a batch with a duplicate key succeeded");
                } catch (SQLException e) {
                    String state = e.getNextException() != null ? e.getNextException().getSQLState() : e.getSQLState();
                    check("23505".equals(state), "batch sqlstate " + state);
                }
            }
            try (Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery("SELECT count(*) FROM items WHERE label LIKE 'atomic%'")) {
                rs.next();
                check(rs.getLong(1) == 0, "rows of the failed batch: " + rs.getLong(1));
            }
            c.setAutoCommit(false);
            try (PreparedStatement move = c.prepareStatement("UPDATE accounts SET balance = balance + ? WHERE id = ?")) {
                move.setLong(1, -10); move.setLong(2, a); move.executeUpdate();
                move.setLong(1, 10); move.setLong(2, b); move.executeUpdate();
                c.commit();
                move.setLong(1, -10); move.setLong(2, a); move.executeUpdate();
                move.setLong(1, 10); move.setLong(2, b); move.executeUpdate();
                c.rollback();
                move.setLong(1, -10); move.setLong(2, a); move.executeUpdate();
                expectState(c, "SELECT 1 / 0", "22012");
                try {
                    move.setLong(1, 10); move.setLong(2, b); move.executeUpdate();
                    check(false, "statement accepted in a failed transaction");
                } catch (SQLException e) {
                    check("25P02".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
                }
                c.rollback();
            }
            c.setAutoCommit(true);
            check(balance(c, a) == 90, "balance a " + balance(c, a));
            check(balance(c, b) == 110, "balance b " + balance(c, b));
            expectState(c, "INSERT INTO accounts (id, balance) VALUES (" + a + ", 1)", "23505");
        }
        // The same batch rewritten by the driver into multi-row INSERTs with
        // parameters: Pieskieo cuts each one per shard.
        try (Connection c = DriverManager.getConnection(args[0] + "?reWriteBatchedInserts=true", args[1], args[2]);
             PreparedStatement ins = c.prepareStatement("INSERT INTO items (id, label) VALUES (?, ?)")) {
            for (long id = 101; id <= 130; id++) {
                ins.setLong(1, id);
                ins.setString(2, "rewritten" + id);
                ins.addBatch();
            }
            ins.executeBatch();
            try (Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery("SELECT id, label FROM items WHERE label LIKE 'rewritten%'")) {
                int n = 0;
                while (rs.next()) {
                    check(rs.getString(2).equals("rewritten" + rs.getLong(1)), "rewritten row " + rs.getLong(1));
                    n++;
                }
                check(n == 30, "rewritten rows: " + n);
            }
        }
        System.out.println("pgjdbc ok");
    }
}
