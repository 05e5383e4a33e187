// Pieskieo through pgjdbc: named statements, BEGIN via the extended protocol.
import java.math.BigDecimal;
import java.sql.*;

public class JdbcCheck {
    static final String LABEL = "it's a \\ \"quote\" — zażółć 漢字";

    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0], args[1], args[2])) {
            try (PreparedStatement ins = c.prepareStatement(
                    "INSERT INTO items (id, label, amount) VALUES (?, ?, ?)")) {
                for (long i = 301; i <= 320; i++) {
                    ins.setLong(1, i);
                    ins.setString(2, LABEL + i);
                    ins.setBigDecimal(3, new BigDecimal("9.870"));
                    check(ins.executeUpdate() == 1, "insert count");
                }
            }
            try (PreparedStatement sel = c.prepareStatement(
                    "SELECT label, amount FROM items WHERE id = ?")) {
                for (long i = 301; i <= 320; i++) {
                    sel.setLong(1, i);
                    try (ResultSet rs = sel.executeQuery()) {
                        check(rs.next(), "row " + i);
                        check(rs.getString(1).equals(LABEL + i), "label " + rs.getString(1));
                        check(rs.getBigDecimal(2).toPlainString().equals("9.870"), "amount " + rs.getBigDecimal(2));
                    }
                }
            }
            c.setAutoCommit(false);
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO accounts (id, balance) VALUES (?, ?)")) {
                for (long i = 301; i <= 306; i++) {
                    ins.setLong(1, i);
                    ins.setLong(2, 3);
                    ins.executeUpdate();
                }
            }
            c.commit();
            try (PreparedStatement upd = c.prepareStatement("UPDATE accounts SET balance = 0 WHERE id = ?")) {
                upd.setLong(1, 301);
                upd.executeUpdate();
                upd.setLong(1, 302);
                upd.executeUpdate();
            }
            c.rollback();
            c.setAutoCommit(true);
            try (Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery("SELECT id FROM accounts WHERE balance = 3")) {
                int n = 0;
                while (rs.next()) n++;
                check(n == 6, "balances after rollback: " + n);
            }
            try (PreparedStatement dup = c.prepareStatement("INSERT INTO accounts (id, balance) VALUES (?, ?)")) {
                dup.setLong(1, 301);
                dup.setLong(2, 1);
                dup.executeUpdate();
                check(false, "duplicate accepted");
            } catch (SQLException e) {
                check("23505".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
            }
        }
        System.out.println("pgjdbc ok");
    }
}
