-- The shop's reference data (assumes the empty tables of schema.sql). Every id is given, so tests
-- name products by number; the identity goes on from 21.
--
--   id  product          tags              brand  categories             variants (* out of stock)
--    1  Chef Knife       {steel,sharp}     ACME   Kitchen, Tools         K1-L 39.90, K1-S 29.90, K1-XL* 49.00
--    2  Camp Lantern     {camping,light}   LUMA   Outdoor, Lighting      L2-BLUE 19.50, L2-RED 19.50
--    3  Garden Hose      NULL              NORD   Garden                 H3-15M 24.00, H3-30M* 41.00
--    4  Old Kettle       {kitchen}         ACME   Kitchen                KT4 15.00           (soft-deleted: no document)
--    5  Hammer           {}                none   none                   HM5 12.00
--    6  Desk Lamp        {light}           LUMA   Lighting, Clearance    D6-W 35.00
--    7  Tent             {camping}         zeph   Outdoor                T7-2P 120.00, T7-4P 180.00
--    8  Secateurs        {garden,steel}    NORD   Garden, Tools          S8* 15.25           (no variant in stock)
--    9  Frying Pan       {steel}           ACME   Kitchen                F9-24 30.00, F9-28 34.00
--   10  Sleeping Bag     {camping}         zeph   Outdoor                B10-L 70.00, B10-S 60.00
--   11  Headlamp         {light,camping}   LUMA   Outdoor, Lighting      HL11 22.50
--   12  Rake             NULL              NORD   Garden                 R12 18.00
--   13  Screwdriver Set  {tools}           ACME   Tools                  SD13-12 26.00, SD13-6 16.00
--   14  String Lights    {light}           LUMA   Garden, Lighting       SL14 14.99
--   15  Cutting Board    {}                ACME   none                   none
--   16  Camp Stove       {camping}         zeph   Outdoor, Kitchen       CS16 55.00
--   17  Wheelbarrow      NULL              NORD   Garden, Tools          WB17 89.00
--   18  Floor Lamp       {light}           LUMA   Lighting               FL18* 75.00, FL18-B 79.00
--   19  Cooler Box       {camping}         zeph   Outdoor                CB19 (no price)
--   20  Spatula          {kitchen}         ACME   Kitchen, Clearance     SP20 4.50
--
-- Brands: ACME Acme (US), LUMA Luma (SE), NORD Nordlicht (DE), zeph Zephyr (a lower-case code, no
-- country), IDLE Idle (DE, no product). Countries: DE Germany and SE Sweden in region 1 Europe, US
-- United States in 2 Americas; FR France (no brand). Categories: 1 Kitchen, 2 Outdoor, 3 Garden,
-- 4 Tools, 5 Lighting, 10 Clearance.
INSERT INTO shop.region (id, name) VALUES
    (1, 'Europe'),
    (2, 'Americas');

INSERT INTO shop.country (code, name, region_id) VALUES
    ('DE', 'Germany', 1),
    ('SE', 'Sweden', 1),
    ('US', 'United States', 2),
    ('FR', 'France', 1);

INSERT INTO shop.brand (code, name, country_code) VALUES
    ('ACME', 'Acme', 'US'),
    ('LUMA', 'Luma', 'SE'),
    ('NORD', 'Nordlicht', 'DE'),
    ('zeph', 'Zephyr', NULL),
    ('IDLE', 'Idle', 'DE');

INSERT INTO shop.category (id, name) VALUES
    (1, 'Kitchen'),
    (2, 'Outdoor'),
    (3, 'Garden'),
    (4, 'Tools'),
    (5, 'Lighting'),
    (10, 'Clearance');

INSERT INTO shop.product (id, name, tags, is_deleted, brand_code) OVERRIDING SYSTEM VALUE VALUES
    (1, 'Chef Knife', '{steel,sharp}', false, 'ACME'),
    (2, 'Camp Lantern', '{camping,light}', false, 'LUMA'),
    (3, 'Garden Hose', NULL, false, 'NORD'),
    (4, 'Old Kettle', '{kitchen}', true, 'ACME'),
    (5, 'Hammer', '{}', false, NULL),
    (6, 'Desk Lamp', '{light}', false, 'LUMA'),
    (7, 'Tent', '{camping}', false, 'zeph'),
    (8, 'Secateurs', '{garden,steel}', false, 'NORD'),
    (9, 'Frying Pan', '{steel}', false, 'ACME'),
    (10, 'Sleeping Bag', '{camping}', false, 'zeph'),
    (11, 'Headlamp', '{light,camping}', false, 'LUMA'),
    (12, 'Rake', NULL, false, 'NORD'),
    (13, 'Screwdriver Set', '{tools}', false, 'ACME'),
    (14, 'String Lights', '{light}', false, 'LUMA'),
    (15, 'Cutting Board', '{}', false, 'ACME'),
    (16, 'Camp Stove', '{camping}', false, 'zeph'),
    (17, 'Wheelbarrow', NULL, false, 'NORD'),
    (18, 'Floor Lamp', '{light}', false, 'LUMA'),
    (19, 'Cooler Box', '{camping}', false, 'zeph'),
    (20, 'Spatula', '{kitchen}', false, 'ACME');
SELECT setval(pg_get_serial_sequence('shop.product', 'id'), 20);

INSERT INTO shop.product_category (product_id, category_id) VALUES
    (1, 1), (1, 4),
    (2, 2), (2, 5),
    (3, 3),
    (4, 1),
    (6, 5), (6, 10),
    (7, 2),
    (8, 3), (8, 4),
    (9, 1),
    (10, 2),
    (11, 2), (11, 5),
    (12, 3),
    (13, 4),
    (14, 3), (14, 5),
    (16, 2), (16, 1),
    (17, 3), (17, 4),
    (18, 5),
    (19, 2),
    (20, 1), (20, 10);

INSERT INTO shop.variant (product_id, sku, price, in_stock) VALUES
    (1, 'K1-S', 29.90, true), (1, 'K1-L', 39.90, true), (1, 'K1-XL', 49.00, false),
    (2, 'L2-RED', 19.50, true), (2, 'L2-BLUE', 19.50, true),
    (3, 'H3-15M', 24.00, true), (3, 'H3-30M', 41.00, false),
    (4, 'KT4', 15.00, true),
    (5, 'HM5', 12.00, true),
    (6, 'D6-W', 35.00, true),
    (7, 'T7-2P', 120.00, true), (7, 'T7-4P', 180.00, true),
    (8, 'S8', 15.25, false),
    (9, 'F9-24', 30.00, true), (9, 'F9-28', 34.00, true),
    (10, 'B10-S', 60.00, true), (10, 'B10-L', 70.00, true),
    (11, 'HL11', 22.50, true),
    (12, 'R12', 18.00, true),
    (13, 'SD13-6', 16.00, true), (13, 'SD13-12', 26.00, true),
    (14, 'SL14', 14.99, true),
    (16, 'CS16', 55.00, true),
    (17, 'WB17', 89.00, true),
    (18, 'FL18', 75.00, false), (18, 'FL18-B', 79.00, true),
    (19, 'CB19', NULL, true),
    (20, 'SP20', 4.50, true);
