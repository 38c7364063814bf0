-- A small shop database for the text-to-SQL demo (loaded into an in-memory SQLite database).
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                     product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL);
INSERT INTO customers VALUES (1, 'Alice', 'Paris'), (2, 'Bob', 'Berlin'), (3, 'Chloe', 'Paris'), (4, 'Dan', 'Rome');
INSERT INTO products VALUES (1, 'pen', 1.5), (2, 'notebook', 4.0), (3, 'lamp', 25.0), (4, 'chair', 60.0);
INSERT INTO orders VALUES (1, 1, 1, 10), (2, 1, 3, 1), (3, 2, 2, 3), (4, 3, 4, 2), (5, 4, 1, 5), (6, 3, 2, 1);
